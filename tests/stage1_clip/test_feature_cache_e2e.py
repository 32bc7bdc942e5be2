"""Stage 1 with its frozen-tower caches through the CLI: the same losses as the live towers, read back on a second
run without decoding an image, sizes in the train log, and exact resume."""
import json
import shutil
from pathlib import Path

import pytest

from tests.stage1_clip.test_train_e2e import assert_resume_from_step3_matches, pretrain, train_losses

pytestmark = pytest.mark.slow

# The default recipe's freezing (configs/clip/default.yaml) on a small EfficientNet-Lite0 + a locked tiny text tower;
# no augmentation (crop scale 1: the whole drawing), so the live run sees the same pixels as the view set.
LIT = ["model.vision.type=efficientnet_lite0", "model.vision.pretrained=false", "model.vision.image_size=32",
       "data.random_resized_crop_scale=[1.0, 1.0]", "data.batch_size=16", "train.max_steps=6",
       "train.save_every=3", "train.keep_states=5", "data.val=null",
       r'train.param_groups=[{pattern: "^vision\\.net\\.(_blocks\\.15|_conv_head|_bn1)\\.", lr: 1.0e-4},'
       r' {pattern: "^vision\\.", lr: 0.0}, {pattern: "^text\\.", lr: 0.0}]']


def train_records(out: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["split"] == "train"}


@pytest.fixture(scope="module")
def shards(emoji_shards, tmp_path_factory) -> Path:
    """A private copy: the cache is written beside the shards."""
    copy = tmp_path_factory.mktemp("cache_shards") / "emoji"
    shutil.copytree(emoji_shards, copy)
    return copy


def test_cached_runs_match_the_live_run_and_resume_exactly(shards, tmp_path):
    pretrain(shards, tmp_path / "live", *LIT, "data.feature_cache=false")
    pretrain(shards, tmp_path / "building", *LIT)
    pretrain(shards, tmp_path / "cached", *LIT)
    live, building, cached = (train_losses(tmp_path / name) for name in ("live", "building", "cached"))
    assert sorted(live) == [1, 2, 3, 4, 5, 6]
    for step in live:
        assert building[step] == pytest.approx(live[step], rel=1e-5), step
        assert cached[step] == pytest.approx(live[step], rel=1e-5), step
    assert "image_cache_mb" not in train_records(tmp_path / "live")[6]
    last = train_records(tmp_path / "cached")[6]
    assert last["image_cache_hit_rate"] == 1.0 and last["text_cache_hit_rate"] == 1.0
    assert last["image_cache_not_decoded"] == 1.0  # every view's entry was there: the loader decoded no image
    assert last["image_cache_mb"] > 0 and last["text_cache_mb"] > 0
    first = train_records(tmp_path / "building")[1]
    assert first["image_cache_hit_rate"] == 0.0 and first["image_cache_not_decoded"] == 0.0
    assert_resume_from_step3_matches(shards, tmp_path / "building", tmp_path / "resumed", LIT)
