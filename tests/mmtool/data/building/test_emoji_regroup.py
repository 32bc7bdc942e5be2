"""`mmtool data emoji-regroup`: another style held out from an existing build, checked byte for byte against a direct
build with that style held out (stand-in SVG packages, as in test_emoji_styles.py)."""
import json

import pytest

from mmtool.data.building.emoji import build_emoji
from mmtool.data.building.emoji_catalog import read_emoji
from mmtool.errors import MmtoolError
from mmtool.data.building.emoji_regroup import regroup_emoji
from tests.mmtool.data.building.test_emoji_styles import needs_catalogue, stand_in_packages

STYLES = "noto,twemoji,fluent-flat"


@pytest.fixture(scope="module")
def npm(tmp_path_factory):
    cache = tmp_path_factory.mktemp("npm")
    entries = read_emoji()[:60]
    stand_in_packages(cache, entries, missing=entries[7].name)  # the styles differ in what they draw
    return cache


@pytest.fixture(scope="module")
def source(npm, tmp_path_factory):
    return build(tmp_path_factory.mktemp("fluent"), npm, "fluent-flat")


def build(out, npm, eval_style):
    build_emoji(out, image_size=24, val_fraction=0.3, limit=60, shard_size=50, styles=STYLES, eval_style=eval_style,
                npm_cache=npm)
    return out


def same_files(ours, direct) -> None:
    names = sorted(path.name for path in direct.iterdir())
    assert sorted(path.name for path in ours.iterdir()) == names
    for name in names:
        assert (ours / name).read_bytes() == (direct / name).read_bytes(), name


@pytest.mark.slow
@needs_catalogue
@pytest.mark.parametrize("held_out", ["twemoji", "noto", None])
def test_regrouped_shards_are_the_direct_build_byte_for_byte(npm, source, tmp_path, held_out):
    regroup_emoji(source, tmp_path / "regrouped", held_out, shard_size=50)
    direct = build(tmp_path / "direct", npm, held_out)
    same_files(tmp_path / "regrouped", direct)
    meta = json.loads((direct / "meta.json").read_text())
    assert meta["eval_style"] == held_out  # the comparison covers a changed meta.json, not a copied one
    if held_out:
        assert set(meta["styles"][held_out]["samples"]) == {"heldout_train", "heldout_val"}


@needs_catalogue
def test_bad_sources_and_styles_are_named(tmp_path):
    with pytest.raises(MmtoolError, match=f"--from {tmp_path}: no meta.json"):
        regroup_emoji(tmp_path, tmp_path / "out", "noto")
    (tmp_path / "meta.json").write_text(json.dumps({"dataset": "openclipart", "report": None}))
    with pytest.raises(MmtoolError, match="dataset 'openclipart', not an mmtool data emoji build"):
        regroup_emoji(tmp_path, tmp_path / "out", "noto")
    (tmp_path / "meta.json").write_text(json.dumps({"dataset": "emoji", "report": "styles_report.json",
                                                    "styles": {"noto": {}, "twemoji": {}}}))
    with pytest.raises(MmtoolError, match="--eval-style fluent-flat is not among .* styles noto,twemoji"):
        regroup_emoji(tmp_path, tmp_path / "out", "fluent-flat")
    with pytest.raises(MmtoolError, match="is the source folder"):
        regroup_emoji(tmp_path, tmp_path, "noto")
