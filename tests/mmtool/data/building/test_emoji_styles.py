"""The multi-style emoji corpus: matching concepts to Twemoji / Fluent files, the shared split, the held-out style,
the unmatched report, and fetching the npm packages. Builds use small stand-in SVG packages, plus one real build
when scripts/setup.sh has fetched the real ones."""
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from mmtool.data.building.emoji import HELDOUT, REPORT_FILE, build_emoji
from mmtool.data.building.emoji_catalog import EMOJI_TEST, read_emoji
from mmtool.data.building.emoji_match import fluent_slugs, twemoji_stems
from mmtool.data.building.emoji_render import NOTO_FONT
from mmtool.data.building.emoji_styles import FLUENT, STYLES, TWEMOJI, find_artwork, parse_styles
from mmtool.data.building.npm_cache import npm_package
from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.errors import MmtoolError

REAL_CACHE = Path(__file__).parents[4] / ".cache" / "npm"  # where scripts/setup.sh fetches the packages
needs_catalogue = pytest.mark.skipif(not (NOTO_FONT.is_file() and EMOJI_TEST.is_file()),
                                     reason="apt-get install -y fonts-noto-color-emoji unicode-data unicode-cldr-core")
needs_packages = pytest.mark.skipif(
    not all((REAL_CACHE / f"{name.lstrip('@').replace('/', '-')}-{version}" / "package.json").is_file()
            for name, version in (TWEMOJI, FLUENT)), reason="run scripts/setup.sh (fetches the npm SVG packages)")
SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><circle cx="16" cy="16" r="{r}" fill="#fc0"/></svg>'


def test_twemoji_file_names_drop_fe0f_unless_the_sequence_has_a_zwj():
    assert twemoji_stems((0x1F600,)) == ["1f600"]
    assert twemoji_stems((0x263A, 0xFE0F)) == ["263a"]  # smiling face
    assert twemoji_stems((0x23, 0xFE0F, 0x20E3)) == ["23-20e3"]  # keycap: #
    assert twemoji_stems((0x1F3C3, 0x200D, 0x2642, 0xFE0F))[0] == "1f3c3-200d-2642-fe0f"  # man running
    # eye in speech bubble: Twemoji's one ZWJ file without its FE0F
    assert "1f441-200d-1f5e8" in twemoji_stems((0x1F441, 0xFE0F, 0x200D, 0x1F5E8, 0xFE0F))


def test_fluent_slugs_from_cldr_names_with_skin_tones_as_suffixes():
    assert fluent_slugs("grinning face")[0] == "grinning-face"
    assert "waving-hand-default" in fluent_slugs("waving hand")
    assert fluent_slugs("waving hand: medium-dark skin tone")[0] == "waving-hand-medium-dark"
    assert fluent_slugs("man: dark skin tone, bald")[0] == "man-bald-dark"
    assert "man-blonde-hair-default" in fluent_slugs("man: blond hair")
    assert "person-mage-light" in fluent_slugs("mage: light skin tone")
    assert fluent_slugs("merman: dark skin tone") == ["man-merpeople-dark"]
    assert fluent_slugs("keycap: #")[0] == "keycap-hashtag"
    assert fluent_slugs("Japanese “here” button")[0] == "japanese-here-button"
    assert fluent_slugs("piñata")[0] == "pinata" and fluent_slugs("men’s room")[0] == "mens-room"


def test_style_list_errors_name_the_culprit():
    assert parse_styles("all", None) == list(STYLES)
    assert parse_styles(" noto, twemoji,noto", "twemoji") == ["noto", "twemoji"]
    with pytest.raises(MmtoolError, match="unknown style 'apple'"):
        parse_styles("noto,apple", None)
    with pytest.raises(MmtoolError, match="fluent-flat is not among"):
        parse_styles("noto,twemoji", "fluent-flat")
    with pytest.raises(MmtoolError, match="leaves no style to train on"):
        parse_styles("twemoji", "twemoji")


def test_fetching_without_npm_or_with_a_failing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(MmtoolError, match="npm is not on PATH"):
        npm_package("@twemoji/svg", "15.0.0", tmp_path / "cache")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "npm").write_text("#!/bin/sh\necho 'npm error 404 Not Found' >&2\nexit 1\n")
    (tmp_path / "bin" / "npm").chmod(0o755)
    with pytest.raises(MmtoolError, match="npm pack @twemoji/svg@15.0.0 .* failed: npm error 404 Not Found"):
        npm_package("@twemoji/svg", "15.0.0", tmp_path / "cache")


def stand_in_packages(cache: Path, entries, missing: str) -> None:
    """Twemoji and Fluent-flat packages with a drawing of every entry but `missing`, and one file nobody uses."""
    twemoji, fluent = cache / "twemoji-svg-15.0.0", cache / "fluentui-emoji-1.3.0" / "icons" / "flat"
    fluent.mkdir(parents=True)
    twemoji.mkdir()
    for folder in (twemoji, cache / "fluentui-emoji-1.3.0"):
        (folder / "package.json").write_text("{}")
    for i, emoji in enumerate(entries):
        if emoji.name != missing:
            (twemoji / f"{twemoji_stems(emoji.codepoints)[0]}.svg").write_text(SVG.format(r=4 + i % 12))
            (fluent / f"{fluent_slugs(emoji.name)[0]}.svg").write_text(SVG.format(r=15 - i % 12))
    (twemoji / "e50a.svg").write_text(SVG.format(r=8))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """60 emoji in three styles (stand-in SVGs), Fluent-flat held out; Twemoji lacks one concept."""
    cache, out = tmp_path_factory.mktemp("npm"), tmp_path_factory.mktemp("emoji_styles")
    entries = read_emoji()[:60]
    stand_in_packages(cache, entries, missing=entries[7].name)
    stats = build_emoji(out, image_size=24, val_fraction=0.3, limit=60, shard_size=50,
                        styles="noto,twemoji,fluent-flat", eval_style="fluent-flat", npm_cache=cache)
    by_split = {path.name.rsplit("-", 1)[0]: [] for path in out.glob("*.tar")}
    for split in by_split:
        by_split[split] = list(parsed_samples(resolve_shards(str(out / f"{split}-*.tar")), Counter()))
    return out, stats, by_split, entries


@pytest.mark.slow
@needs_catalogue
def test_every_style_of_a_concept_lands_on_the_same_side_of_the_split(held_out):
    _, stats, by_split, _ = held_out
    sides = defaultdict(set)
    for split, samples in by_split.items():
        for sample in samples:
            sides[sample.meta["base"]].add(split.removeprefix(HELDOUT))
    assert all(len(side) == 1 for side in sides.values())
    assert {"train", "val"} <= set().union(*sides.values())


@pytest.mark.slow
@needs_catalogue
def test_the_held_out_style_is_only_in_the_heldout_splits(held_out):
    out, stats, by_split, _ = held_out
    assert set(by_split) == {"train", "val", "heldout_train", "heldout_val"}
    assert {s.meta["style"] for split in ("train", "val") for s in by_split[split]} == {"noto", "twemoji"}
    assert {s.meta["style"] for split in ("heldout_train", "heldout_val") for s in by_split[split]} == {"fluent-flat"}
    for split in ("train", "val"):  # the held-out style draws the same concepts: only the style is new
        assert {s.meta["concept"] for s in by_split[HELDOUT + split]} <= {s.meta["concept"] for s in by_split[split]}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["eval_style"] == "fluent-flat" and meta["styles"]["fluent-flat"]["matched"] == 59
    sample = by_split["heldout_val"][0]
    assert sample.key.startswith("fluent-flat_") and sample.meta["name"] and sample.meta["subgroup"]


@pytest.mark.slow
@needs_catalogue
def test_unmatched_concepts_and_unused_files_are_reported(held_out):
    out, stats, _, entries = held_out
    assert stats["styles"]["twemoji"] == {"matched": 59, "unmatched": 1}
    assert stats["styles"]["noto"] == {"matched": 60, "unmatched": 0}
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["twemoji"]["unmatched"] == [entries[7].name] and "e50a" in report["twemoji"]["unused_files"]
    assert report["fluent-flat"]["unmatched"] == [entries[7].name]
    attribution = (out / "ATTRIBUTION.md").read_text()
    assert "CC-BY 4.0" in attribution and "Microsoft Corporation" in attribution and "Noto" in attribution


@needs_catalogue
@needs_packages
def test_real_packages_match_every_concept_to_its_own_drawing():
    catalogue = read_emoji()
    twemoji = find_artwork(STYLES["twemoji"], catalogue, REAL_CACHE)
    flat = find_artwork(STYLES["fluent-flat"], catalogue, REAL_CACHE)
    assert len(twemoji.drawings) == len(catalogue)  # Twemoji 15.0 draws all of Emoji 15.0
    assert len(flat.drawings) > 3000  # Fluent lacks country flags, multi-person skin tones and families
    for artwork in (twemoji, flat):
        assert len(set(artwork.drawings.values())) == len(artwork.drawings)  # no drawing shows two concepts


@pytest.mark.slow
@needs_catalogue
@needs_packages
def test_a_small_real_build_in_three_styles(tmp_path):
    stats = build_emoji(tmp_path, image_size=32, limit=50, styles="noto,twemoji,fluent-flat", npm_cache=REAL_CACHE)
    assert stats["styles"] == {name: {"matched": 50, "unmatched": 0} for name in ("noto", "twemoji", "fluent-flat")}
    samples = list(parsed_samples(resolve_shards(str(tmp_path / "*.tar")), Counter()))
    assert Counter(s.meta["style"] for s in samples) == {"noto": 50, "twemoji": 50, "fluent-flat": 50}
    assert len({s.key for s in samples}) == 150
    assert os.path.getsize(tmp_path / "ATTRIBUTION.md") > 1000
