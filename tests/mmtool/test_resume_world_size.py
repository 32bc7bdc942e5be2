"""A stage-1 run saved on some number of ranks resumes on another (2 -> 1, then 1 -> 3) under ZeRO-2 and ZeRO-3:
the same global batch (accumulation adjusts), the optimizer state re-partitioned through DeepSpeed's universal
checkpoint, and the epoch read on in its own order. Each step's loss and the final weights must equal those of the
uninterrupted run (float32, so the bound is tight: a lost Adam moment or a sample read twice moves them by far
more)."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers.distributed import free_port
from tests.helpers.multinode_launch import TIMEOUT_S, cut_shard
from tests.stage1_clip.test_train_e2e import TINY, clean_env, train_losses
from tests.mmtool.test_multinode import assert_same_weights

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SAMPLES, GLOBAL_BATCH = 96, 24  # 4 steps an epoch; 24 = 2 x 12 = 1 x 12 x 2 = 3 x 8
BATCH_FOR = {1: 12, 2: 12, 3: 8}  # data.batch_size per rank count


@pytest.fixture(scope="module")
def shard(emoji_shards, tmp_path_factory):
    return cut_shard(emoji_shards / "train-000000.tar", tmp_path_factory.mktemp("resize"), SAMPLES)


def deepspeed_config(folder, zero: int):
    path = folder / f"zero{zero}_fp32.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": zero}}))
    return path


def run(shard, out, ranks: int, ds_config, resume: bool = False):
    sets = [f"data.train={shard}/train-*.tar", "data.val=null", *TINY, f"data.batch_size={BATCH_FOR[ranks]}",
            f"train.global_batch={GLOBAL_BATCH}", "train.max_steps=4", "train.save_every=1", "train.keep_states=5",
            "train.lr=3e-3", "train.warmup_steps=1", "data.shuffle_buffer=16", f"train.deepspeed={ds_config}"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
               str(free_port()), "-m", "mmtool", "pretrain-clip", "--config", "configs/clip/tiny_vit.yaml",
               "--out", str(out), *[arg for item in sets for arg in ("--set", item)], *(["--resume"] if resume else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=clean_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def rewind(run_dir, copy, step: int):
    """A copy of `run_dir` as it stood after `step`: later states and all metrics gone."""
    shutil.copytree(run_dir, copy)
    for tag in (copy / "state").glob("step*"):
        if int(tag.name[4:]) > step:
            shutil.rmtree(tag)
    (copy / "state" / "latest").write_text(f"step{step}")
    (copy / "metrics.jsonl").write_text("")
    (copy / "clip.pt").unlink()
    return copy


def assert_continues(full, resumed, steps: list[int]):
    expected, got = train_losses(full), train_losses(resumed)
    assert sorted(got) == steps
    for step in steps:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), (step, got, expected)


@pytest.mark.parametrize("zero", [2, 3])
def test_two_ranks_resume_on_one_then_three(shard, tmp_path, zero):
    ds_config = deepspeed_config(tmp_path, zero)
    full = tmp_path / "two"
    run(shard, full, 2, ds_config)
    one = rewind(full, tmp_path / "one", step=1)
    log = run(shard, one, 1, ds_config, resume=True)
    assert "global batch 1 rank(s) x 12 x 2 accumulated" in log.stdout + log.stderr
    assert not (one / "state" / "universal").exists()  # the converted copy is gone once loaded
    assert_continues(full, one, [2, 3, 4])
    three = rewind(one, tmp_path / "three", step=2)
    run(shard, three, 3, ds_config, resume=True)
    assert_continues(full, three, [3, 4])
    assert_same_weights(torch.load(three / "clip.pt", weights_only=True)["state_dict"],
                        torch.load(full / "clip.pt", weights_only=True)["state_dict"])

