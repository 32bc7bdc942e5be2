"""The Noto emoji builder on the first few hundred emoji (needs Debian's fonts-noto-color-emoji, unicode-data,
unicode-cldr-core)."""
import json
from collections import Counter, defaultdict

import pytest

from mmtool.data.building.emoji import NOTO_FONT, build_emoji, readable_name
from mmtool.data.building.emoji_catalog import EMOJI_TEST, base_of
from mmtool.data.reading.loader import make_eval_set, resolve_shards, sample_count
from mmtool.data.reading.sample_stream import parsed_samples

pytestmark = pytest.mark.skipif(not (NOTO_FONT.is_file() and EMOJI_TEST.is_file()),
                                reason="apt-get install -y fonts-noto-color-emoji unicode-data unicode-cldr-core")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji")
    # The first 250 emoji hold smileys plus hand gestures with five skin tones each.
    stats = build_emoji(out, image_size=32, val_fraction=0.3, limit=250, shard_size=100)
    return out, stats


@pytest.mark.slow
def test_variants_of_one_base_emoji_never_straddle_the_split(built):
    out, stats = built
    splits_of_base = defaultdict(set)
    for split in ("train", "val"):
        for sample in parsed_samples(resolve_shards(str(out / f"{split}-*.tar")), Counter()):
            splits_of_base[sample.meta["base"]].add(split)
    assert all(len(splits) == 1 for splits in splits_of_base.values())
    assert stats["samples"]["val"] > 10 and stats["samples"]["train"] > 100
    assert sum(stats["samples"].values()) == 250 and stats["styles"]["noto"] == {"matched": 250, "unmatched": 0}


@pytest.mark.slow
def test_samples_carry_captions_and_labels(built):
    out, _ = built
    samples = list(parsed_samples(resolve_shards(str(out / "*.tar")), Counter()))
    assert all(len(s.captions) >= 5 and all(s.captions) for s in samples)
    assert all(s.meta["group"] and s.meta["subgroup"] and s.meta["name"] for s in samples)
    waving = next(s for s in samples if s.meta["name"] == "waving hand: medium skin tone")
    assert waving.captions[0] == "an emoji of waving hand with medium skin tone"
    assert "wave" in waving.meta["keywords"] and waving.meta["subgroup"] == "hand-fingers-open"


@pytest.mark.slow
def test_meta_json_and_eval_set(built):
    out, stats = built
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["val"]["samples"] == stats["samples"]["val"] == sample_count(str(out / "val-*.tar"))
    eval_set = make_eval_set(resolve_shards(str(out / "val-*.tar")), 24)
    assert eval_set["image"].shape == (stats["samples"]["val"], 3, 24, 24) and not eval_set["skipped"]
    assert set(eval_set["labels"]) == {"group", "subgroup"}


@pytest.mark.slow
def test_the_build_is_byte_for_byte_reproducible(built, tmp_path):
    out, _ = built
    build_emoji(tmp_path, image_size=32, val_fraction=0.3, limit=250, shard_size=100)
    for shard in out.glob("*.tar"):
        assert (tmp_path / shard.name).read_bytes() == shard.read_bytes()


def test_base_drops_skin_tone_gender_and_hair():
    technologist = base_of((0x1F9D1, 0x200D, 0x1F4BB))
    assert base_of((0x1F469, 0x1F3FD, 0x200D, 0x1F4BB)) == technologist  # woman technologist: medium skin tone
    assert base_of((0x1F3C3, 0x200D, 0x2642, 0xFE0F)) == base_of((0x1F3C3,))  # man running -> person running
    assert base_of((0x1F468, 0x200D, 0x1F9B0)) == base_of((0x1F9D1,))  # man: red hair -> person


def test_readable_names():
    assert readable_name("flag: Japan") == "flag of Japan"
    assert readable_name("keycap: 1") == "keycap 1"
    assert readable_name("grinning face") == "grinning face"
