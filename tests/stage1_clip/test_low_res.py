"""Low-resolution pretraining (data.low_res): the first steps are exactly a run at the small size, the rest train,
evaluate and save at model.vision.image_size under a restarted lr schedule, each size with its own trunk cache, and
resume is exact across the switch."""
import json
from pathlib import Path

import pytest

from mmtool.config import load_config
from mmtool.errors import MmtoolError
from stage1_clip.config import ClipConfig
from stage1_clip.input_size import low_res_restart
from tests.stage1_clip.test_feature_cache_e2e import LIT, shards, train_records  # noqa: F401 (shards: a fixture)
from tests.stage1_clip.test_train_e2e import assert_resume_from_step3_matches, pretrain, train_losses

# tiny_vit.yaml's lr 5e-4 warms up over 100 steps: the first 3 steps stay under 1.5e-5; the restart reaches
# 0.5 x 5e-4 at once (a one-step warm-up).
LOW_RES = [*LIT, "data.low_res.image_size=24", "data.low_res.steps=3", "data.low_res.warmup_steps=1",
           "data.low_res.lr_ratio=0.5"]


def test_image_size_at_each_step():
    cfg = load_config(ClipConfig, None, ["model.vision.image_size=160", "data.low_res.image_size=96",
                                         "data.low_res.steps=1500"])
    assert [cfg.image_size_at(step) for step in (0, 1499, 1500, 1799)] == [96, 96, 160, 160]
    assert load_config(ClipConfig, None, ["model.vision.image_size=160"]).image_size_at(0) == 160


@pytest.mark.parametrize("overrides, message", [
    (["data.low_res.steps=-1"], "steps is a number of optimizer steps, got -1"),
    (["data.low_res.steps=10"], "image_size is in pixels, got 0"),
])
def test_bad_low_res_settings_are_named(overrides, message):
    with pytest.raises(MmtoolError, match=message):
        load_config(ClipConfig, None, overrides)


def test_low_res_needs_a_tower_of_any_input_size_and_steps_at_the_final_size():
    low_res = ["data.low_res.image_size=32", "data.low_res.steps=100"]
    with pytest.raises(MmtoolError, match="model.vision.type vit has a fixed input size"):
        low_res_restart(load_config(ClipConfig, None, low_res), steps_per_epoch=50)
    effnet = [*low_res, "model.vision.type=efficientnet_lite0", "model.vision.image_size=64"]
    with pytest.raises(MmtoolError, match="the run has 100 steps, none would be at model.vision.image_size 64"):
        low_res_restart(load_config(ClipConfig, None, [*effnet, "train.max_steps=100"]), steps_per_epoch=50)
    restart = low_res_restart(load_config(ClipConfig, None, [*effnet, "train.epochs=3"]), steps_per_epoch=50)
    assert (restart.step, restart.warmup_steps, restart.peak) == (100, 20, 1.0)
    assert low_res_restart(load_config(ClipConfig, None, effnet[2:]), steps_per_epoch=50) is None


def cache_sizes(data: Path) -> dict[int, int]:
    """Image size -> entries, over the image caches beside the shards."""
    sizes = {}
    for namespace in (data / "feature_cache").glob("*/namespace.json"):
        meta = json.loads(namespace.read_text())
        if meta.get("tower") == "image":
            sizes[meta["config"]["image_size"]] = sum(1 for _ in namespace.parent.rglob("*.bin"))
    return sizes


@pytest.mark.slow
def test_low_res_steps_are_the_small_run_then_the_final_size(shards, tmp_path):  # noqa: F811 (the fixture)
    val = [f"data.val={shards}/val-*.tar", "train.eval_every=2"]
    pretrain(shards, tmp_path / "small", *LIT, "model.vision.image_size=24")
    result = pretrain(shards, tmp_path / "low_res", *LOW_RES, *val)
    small, low_res = train_losses(tmp_path / "small"), train_losses(tmp_path / "low_res")
    for step in (1, 2, 3):  # the same schedule, pixels and weights: the small run's losses
        assert low_res[step] == pytest.approx(small[step], rel=1e-6), step
    assert all(low_res[step] != pytest.approx(small[step], rel=1e-5) for step in (4, 5, 6))
    records = train_records(tmp_path / "low_res")
    assert [records[step]["image_size"] for step in range(1, 7)] == [24, 24, 24, 32, 32, 32]
    assert records[2]["lr"] < 2e-5 and records[4]["lr"] == pytest.approx(2.5e-4)  # the schedule started again
    assert "images at 32 px from step 3" in result.stdout + result.stderr
    evaluations = [json.loads(line) for line in (tmp_path / "low_res" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["image_size"]) for r in evaluations if r["split"] == "val"] == [(2, 24), (4, 32), (6, 32)]
    assert json.loads((tmp_path / "low_res" / "eval.json").read_text())["image_size"] == 32
    assert set(cache_sizes(shards)) >= {24, 32} and cache_sizes(shards)[32] > 0
    assert_resume_from_step3_matches(shards, tmp_path / "low_res", tmp_path / "resumed", [*LOW_RES, *val])
