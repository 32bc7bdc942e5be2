"""Fault injection on the real `mmtool pipeline` (issue 16): its whole process group is SIGKILLed in the middle of
its CLIP training step; the same command run again finds the finished steps up to date, continues the training
step from its saved state (`--resume`: the steps logged before the kill stay, the run goes on after the state),
runs the steps after it, and leaves outputs that load. No process of the killed run outlives it by 5 s.

The pipeline is cut after the CLIP evaluation (`--until eval-clip:val`): stages 2-3 would add a dozen process
starts, and their training steps resume as pretrain-clip's does (the resume tests of each stage)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from mmtool.config import load_config
from mmtool.pipeline import PipelineConfig, fingerprint, plan
from tests.helpers.processes import group_members
from tests.mmtool.test_faults_sigkill import logged_steps
from tests.stage1_clip.test_train_e2e import TINY, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.faults]

STEPS, SAVE_EVERY, KILL_AFTER = 12, 2, 5
GONE_WITHIN_S = 5.0


def write_config(shards: Path, tmp_path: Path) -> Path:
    """A pipeline on the session's emoji shards, whose shards step is up to date (stamped as an earlier run
    leaves it: building the five-style shards takes minutes) and whose CLIP is TINY for STEPS steps."""
    clip_sets = [f"data.train={shards}/train-*.tar", "data.val=null", *TINY, "data.batch_size=32",
                 f"train.max_steps={STEPS}", f"train.save_every={SAVE_EVERY}", "train.keep_states=2"]
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps({"out": str(tmp_path / "run"),
                                  "emoji": {"out": str(shards), "styles": "all", "eval_style": None},
                                  "clip": {"config": "tiny_vit", "set": clip_sets}}))
    shards_step = plan(load_config(PipelineConfig, config))[0]
    assert shards_step.name == "emoji-shards" and shards_step.outputs == [shards / "meta.json"]
    (tmp_path / "run" / "stamps").mkdir(parents=True)
    (tmp_path / "run" / "stamps" / "emoji-shards.json").write_text(
        json.dumps({"fingerprint": fingerprint(shards_step, {}), "seconds": 0.0}))
    return config


def command(config: Path) -> list[str]:
    return [sys.executable, "-m", "mmtool", "pipeline", "--config", str(config), "--until", "eval-clip:val"]


def saved_step(clip: Path) -> int:
    latest = clip / "state" / "latest"
    return int(latest.read_text().strip()[4:]) if latest.is_file() else 0


def kill_mid_training(config: Path, clip: Path) -> list[int]:
    """Starts the pipeline in its own process group and SIGKILLs the group once pretrain-clip has logged
    KILL_AFTER steps and is past its last saved state (mid-way between two saves); returns the group's processes."""
    run = subprocess.Popen(command(config), env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline, members = time.monotonic() + 240, []
    try:
        while not (logged_steps(clip) >= KILL_AFTER and logged_steps(clip) > saved_step(clip) > 0):
            assert run.poll() is None, "the pipeline finished before the kill"
            assert time.monotonic() < deadline, "pretrain-clip logged no training step within 240 s"
            time.sleep(0.005)
        members = group_members(run.pid)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        killed_at = time.monotonic()
        while group_members(run.pid) and time.monotonic() - killed_at < GONE_WITHIN_S:
            time.sleep(0.05)
        assert not group_members(run.pid), f"processes {group_members(run.pid)} outlived the kill by {GONE_WITHIN_S} s"
    finally:
        with suppress(ProcessLookupError):  # a failed wait above leaves the run going
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    return members


def train_records(clip: Path) -> list[dict]:
    """The train records of the lines ended by a newline (a resumed run cuts off a last line the kill left
    unfinished)."""
    lines = (clip / "metrics.jsonl").read_text().split("\n")[:-1]
    return [record for line in lines if (record := json.loads(line))["split"] == "train"]


def summary(stdout: str) -> dict[str, str]:
    """step -> status, from the table the pipeline ends with."""
    table = stdout[stdout.rindex("\nstep "):].strip().splitlines()[1:]
    return {row.split()[0]: re.split(r"\s{2,}", row.strip())[1] for row in table}


def test_a_pipeline_killed_mid_training_continues_the_step_on_the_next_run(emoji_shards, tmp_path):
    from stage1_clip.checkpoint import load_clip

    config, clip = write_config(emoji_shards, tmp_path), tmp_path / "run" / "clip"
    members = kill_mid_training(config, clip)
    assert len(members) >= 3, members  # the pipeline, pretrain-clip and its loader worker were killed
    before, saved = train_records(clip), saved_step(clip)
    assert "started" in json.loads((tmp_path / "run" / "stamps" / "pretrain-clip.json").read_text())

    again = subprocess.run(command(config), env=clean_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary(again.stdout) == {"emoji-shards": "up to date", "pretrain-clip": "ran", "eval-clip:val": "ran"}
    started = next(line for line in again.stdout.splitlines() if line.startswith("== pretrain-clip: "))
    assert started.endswith(" --resume"), started
    after = train_records(clip)
    assert after[:len(before)] == before  # the killed run's steps are kept, not started over
    assert [r["step"] for r in after[len(before):]] == list(range(saved + 1, STEPS + 1))
    redone = {r["step"]: r["loss"] for r in after[len(before):]}
    assert all(redone[r["step"]] == r["loss"] for r in before if r["step"] > saved)  # fp32: the same losses

    assert load_clip(clip / "clip.pt").config.train.max_steps == STEPS
    assert "image_to_text_R@1" in json.loads((clip / "eval_val.json").read_text())
    assert not (tmp_path / "run" / "align").exists()  # --until: nothing after eval-clip:val ran
