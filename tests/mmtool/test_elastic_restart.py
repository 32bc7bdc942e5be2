"""torchrun's agent (--max-restarts 1) restarts a run whose rank was killed mid-run: the restarted processes
continue from the last saved state and end with the weights of an uninterrupted run."""
import json
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from tests.helpers.distributed import free_port
from tests.helpers.multinode_launch import TIMEOUT_S
from tests.mmtool.test_multinode import assert_same_weights
from tests.stage1_clip.test_train_e2e import TINY, clean_env, train_losses

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 8


def torchrun_command(shards, out, *agent_args: str) -> list[str]:
    sets = [f"data.train={shards}/train-*.tar", "data.val=null", *TINY, "data.batch_size=8",
            f"train.max_steps={STEPS}", "train.save_every=1", "train.keep_states=2", "train.lr=3e-3",
            "train.warmup_steps=1"]
    rendezvous = agent_args or ("--master-port", str(free_port()))
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *rendezvous,
            "-m", "mmtool", "pretrain-clip", "--config", "tiny_vit", "--out", str(out),
            *[arg for item in sets for arg in ("--set", item)]]


def latest_step(out) -> int:
    """The step of the newest complete state (mmtool writes `latest` once every rank's files are saved)."""
    latest = out / "state" / "latest"
    return int(latest.read_text().strip().removeprefix("step")) if latest.is_file() else 0


def test_a_killed_rank_restarts_from_the_last_state(emoji_shards, tmp_path):
    reference = tmp_path / "uninterrupted"
    subprocess.run(torchrun_command(emoji_shards, reference), check=True, capture_output=True, timeout=TIMEOUT_S,
                   env=clean_env())

    out = tmp_path / "killed"
    elastic = ("--max-restarts", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}")
    agent = subprocess.Popen(torchrun_command(emoji_shards, out, *elastic), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=clean_env())
    deadline = time.monotonic() + TIMEOUT_S
    while latest_step(out) < 2:  # mid-run: a state is saved after every step; `latest` names a complete one
        assert agent.poll() is None and time.monotonic() < deadline, "the run ended before a rank could be killed"
        time.sleep(0.05)
    workers = psutil.Process(agent.pid).children()
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGKILL)
    output, _ = agent.communicate(timeout=TIMEOUT_S)
    assert agent.returncode == 0, output[-3000:]
    assert "restart" in output.lower()  # the agent saw the failure and started the workers again

    # The restarted processes resumed from a state (step 2 or later), not from the start: steps 1-2 logged once.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if r["split"] == "train"]
    assert logged.count(1) == logged.count(2) == 1 and logged.count(STEPS) == 1, logged
    losses, expected = train_losses(out), train_losses(reference)
    assert max(losses) == STEPS
    for step in losses:  # steps logged before the kill and again after the restart agree with the reference
        assert losses[step] == pytest.approx(expected[step], rel=1e-5), (step, losses, expected)
    assert_same_weights(torch.load(out / "clip.pt", weights_only=True)["state_dict"],
                        torch.load(reference / "clip.pt", weights_only=True)["state_dict"], tolerance=1e-5)
