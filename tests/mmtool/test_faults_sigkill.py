"""Fault injection: a training run SIGKILLed mid-step or mid-state-save resumes with `--resume`, finishes, and
repeats the uninterrupted run's losses (fp32); at most one save interval is lost, a half-written state is never
read, and no process of the killed run outlives it (issue 16)."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.processes import alive, children
from tests.stage1_clip.test_train_e2e import TINY, clean_env, pretrain, train_losses

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SAVE_EVERY, STEPS = 2, 24
COMMON = ["data.batch_size=32", f"train.max_steps={STEPS}", f"train.save_every={SAVE_EVERY}", "train.keep_states=2",
          "data.val=null"]


@pytest.fixture(scope="module")
def uninterrupted(emoji_shards, tmp_path_factory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    pretrain(emoji_shards, out, *COMMON)
    return train_losses(out)


def last_losses(out: Path) -> dict[int, float]:
    """Per step, the loss of its last record (a resumed run logs again the steps after its state)."""
    losses = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            losses[record["step"]] = record["loss"]
    return losses


def logged_steps(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def saving_now(out: Path, at_least: int) -> bool:
    """A state folder of step >= at_least exists and `latest` does not name it yet: DeepSpeed is writing it."""
    state = out / "state"
    tags = [int(p.name[4:]) for p in state.glob("step*") if p.name[4:].isdigit()] if state.is_dir() else []
    newest = max(tags, default=0)
    latest = (state / "latest").read_text().strip() if (state / "latest").is_file() else ""
    return newest >= at_least and latest != f"step{newest}"


def start(shards: Path, out: Path, resume: bool) -> subprocess.Popen:
    sets = [f"data.train={shards}/train-*.tar", f"data.val={shards}/val-*.tar", *TINY, *COMMON]
    return subprocess.Popen([sys.executable, "-m", "mmtool", "pretrain-clip", "--config", "configs/clip/tiny_vit.yaml",
                             "--out", str(out), *[arg for item in sets for arg in ("--set", item)],
                             *(["--resume"] if resume else [])],
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(run: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL as soon as `ready()`; then no loader worker of the run may be alive 5 s later."""
    deadline, workers = time.monotonic() + 120, []
    try:
        while not ready():
            assert run.poll() is None, f"the run finished before the {what} kill"
            assert time.monotonic() < deadline
            workers = children(run.pid) or workers
            time.sleep(0.002)
        run.send_signal(signal.SIGKILL)
        run.wait()
        killed_at = time.monotonic()
        while any(alive(pid) for pid in workers) and time.monotonic() - killed_at < 5:
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)], "a loader worker outlived the killed run by 5 s"
    finally:
        run.kill()


def assert_at_most_one_interval_lost(out: Path) -> None:
    done_steps, resumed_from = logged_steps(out), int((out / "state" / "latest").read_text().strip()[4:])
    assert done_steps - resumed_from <= SAVE_EVERY, (done_steps, resumed_from)


def test_a_run_killed_mid_step_then_mid_save_resumes_to_the_same_losses(emoji_shards, uninterrupted, tmp_path):
    """Kill 1 at a random step; its resumed run is killed while DeepSpeed writes a state (the step folder exists,
    `latest` does not name it yet); the second resume reads only complete states and finishes the run."""
    rng, out = random.Random(16), tmp_path / "run"
    mid_step, mid_save = rng.randint(5, 9), rng.randint(12, 18)
    kill_when(start(emoji_shards, out, resume=False), lambda: logged_steps(out) >= mid_step, "mid-step")
    assert_at_most_one_interval_lost(out)
    kill_when(start(emoji_shards, out, resume=True), lambda: saving_now(out, mid_save), "mid-save")
    assert_at_most_one_interval_lost(out)
    pretrain(emoji_shards, out, *COMMON, resume=True)
    got = last_losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == uninterrupted, {s: (got[s], uninterrupted[s]) for s in got if got[s] != uninterrupted[s]}
