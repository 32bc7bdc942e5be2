"""End to end through the CLI: real emoji shards -> pretrain-clip -> clip.pt -> eval-clip, and resume."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

TINY = [
    "model.embed_dim=128", "model.vision.image_size=32", "model.vision.patch_size=8", "model.vision.width=128",
    "model.vision.layers=3", "model.vision.heads=4", "model.text.width=128", "model.text.layers=2",
    "model.text.heads=4", "model.text.context_length=24", "tokenizer.vocab_size=512", "data.workers=1",
    "train.deepspeed=configs/deepspeed/fp32.json", "train.log_every=1",
]


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def clean_env() -> dict:
    """This process's environment without a process group's variables (an in-process engine test sets them)."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}


def mmtool(*args, check=True, **kwargs):
    result = subprocess.run([sys.executable, "-m", "mmtool", *map(str, args)], capture_output=True, text=True,
                            env=clean_env(), **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"mmtool {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result


def pretrain(shards: Path, out: Path, *extra: str, resume: bool = False):
    sets = [f"data.train={shards}/train-*.tar", f"data.val={shards}/val-*.tar", *TINY, *extra]
    return mmtool("pretrain-clip", "--config", "configs/clip/tiny_vit.yaml", "--out", out,
                  *[arg for item in sets for arg in ("--set", item)], *(["--resume"] if resume else []))


def train_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_tiny_clip_learns_real_emoji_and_checkpoint_evaluates(emoji_shards, tmp_path):
    out = tmp_path / "run"
    pretrain(emoji_shards, out, "data.batch_size=64", "train.epochs=12", "train.lr=2e-3", "train.warmup_steps=10",
             "train.log_every=5")
    metrics = json.loads((out / "eval.json").read_text())
    chance = 1 / metrics["samples"]
    assert metrics["image_to_text_R@1"] > 5 * chance, metrics
    assert metrics["text_to_image_R@1"] > 5 * chance, metrics
    losses = train_losses(out)
    assert losses[max(losses)] < 0.6 * losses[min(losses)]

    # The checkpoint alone (no run folder) reproduces the training-time evaluation.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "clip.pt", alone / "clip.pt")
    report = alone / "eval.json"
    mmtool("eval-clip", alone / "clip.pt", "--data", f"{emoji_shards}/val-*.tar", "--json", report)
    again = json.loads(report.read_text())
    for key in ("image_to_text_R@1", "text_to_image_R@5", "zero_shot_group_acc"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key
    payload = torch.load(out / "clip.pt", weights_only=True)
    assert "tokenizer.model" in payload["extras"]


def test_resume_continues_with_the_same_losses(emoji_shards, tmp_path):
    """Stop after step 3 (mid-epoch), resume: steps 4-6 match an uninterrupted run exactly."""
    common = ["data.batch_size=32", "train.max_steps=6", "train.save_every=3", "train.keep_states=5",
              "data.val=null"]
    full = tmp_path / "full"
    pretrain(emoji_shards, full, *common)
    assert_resume_from_step3_matches(emoji_shards, full, tmp_path / "resumed", common)


def assert_resume_from_step3_matches(shards: Path, full: Path, resumed: Path, overrides: list[str]) -> None:
    """Rewinds a copy of a finished 6-step run (states saved at 3 and 6) to step 3 and resumes it: steps 4-6 must
    repeat the uninterrupted run's losses."""
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "state" / "step6")
    (resumed / "state" / "latest").write_text("step3")
    (resumed / "metrics.jsonl").write_text("")
    pretrain(shards, resumed, *overrides, resume=True)
    expected, got = train_losses(full), train_losses(resumed)
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step


def test_cli_errors_are_one_line(tmp_path):
    result = mmtool("pretrain-clip", "--config", tmp_path / "missing.yaml", check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"mmtool: error: config file not found: {tmp_path / 'missing.yaml'} (bundled clip recipes: ")
    result = mmtool("pretrain-clip", "--set", "train.bogus=1", "--out", tmp_path / "o", check=False)
    assert result.returncode == 2 and "'bogus'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = mmtool("pretrain-clip", "--set", "loss.type=hinge", "--set", f"data.train={tmp_path}/none.tar",
                    "--out", tmp_path / "o", check=False)
    assert result.returncode == 2 and "'hinge'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = mmtool("eval-clip", tmp_path / "nope.pt", "--data", "x", check=False)
    assert result.returncode == 2 and "checkpoint not found" in result.stderr


def test_accumulated_micro_batches_train_like_one_big_batch(emoji_shards, tmp_path):
    """2 micro-batches of 16 per step read the same 32 samples as one batch of 32 and contrast them all."""
    common = ["train.max_steps=4", "data.val=null", "train.warmup_steps=1"]
    pretrain(emoji_shards, tmp_path / "big", "data.batch_size=32", *common)
    pretrain(emoji_shards, tmp_path / "accum", "data.batch_size=16", "train.accum_steps=2", *common)
    big, accum = train_losses(tmp_path / "big"), train_losses(tmp_path / "accum")
    assert sorted(accum) == [1, 2, 3, 4]
    for step in big:
        assert accum[step] == pytest.approx(big[step], rel=1e-4), step
