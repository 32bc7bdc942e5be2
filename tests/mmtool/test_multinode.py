"""Two "nodes" on one machine (two launcher processes, one rank each, gloo over 127.0.0.1), under torchrun with a
c10d rendezvous and under the deepspeed launcher with a two-host hostfile: ranks read disjoint halves of the
data, contrast against each other's features, and train exactly like one process holding the whole batch."""
import json

import pytest
import torch

from tests.helpers.multinode_launch import cut_shard, deepspeed_nodes, run_together, torchrun_nodes
from tests.helpers.multinode_probe import key_features
from tests.stage1_clip.test_train_e2e import TINY, mmtool, train_losses
from stage1_clip.loss import build_loss

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SAMPLES, STEPS = 32, 3  # one global batch of 32 is the whole epoch: each step sees the same set in any split
LAUNCHERS = ["torchrun", "deepspeed"]
# tests/stage1_clip/test_train_distributed.py's bound for bf16 ZeRO stages is 5e-2; these runs are float32, much
# closer.
WEIGHT_TOLERANCE = 1e-3


def two_nodes(launcher: str, module_args: list[str], tmp_path) -> list[str]:
    if launcher == "torchrun":
        return torchrun_nodes(module_args)
    return deepspeed_nodes(module_args, tmp_path / "hostfile")


@pytest.fixture(scope="module")
def whole_epoch_shard(emoji_shards, tmp_path_factory):
    return cut_shard(emoji_shards / "train-000000.tar", tmp_path_factory.mktemp("whole_epoch"), SAMPLES)


def training_args(shards, out, batch_size: int) -> list[str]:
    sets = [f"data.train={shards}/train-*.tar", "data.val=null", *TINY, f"data.batch_size={batch_size}",
            f"train.max_steps={STEPS}", "train.lr=3e-3", "train.warmup_steps=1", "data.shuffle_buffer=8"]
    return ["mmtool", "pretrain-clip", "--config", "configs/clip/tiny_vit.yaml", "--out", str(out),
            *[arg for item in sets for arg in ("--set", item)]]


@pytest.fixture(scope="module")
def one_process(whole_epoch_shard, tmp_path_factory):
    """The reference: one process, the whole batch of 32 per step."""
    out = tmp_path_factory.mktemp("one_process")
    mmtool(*training_args(whole_epoch_shard, out, SAMPLES)[1:], timeout=300)
    return out


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_nodes_read_disjoint_halves_and_gather_negatives(launcher, whole_epoch_shard, tmp_path):
    report = tmp_path / "probe.json"
    probe_args = ["tests.helpers.multinode_probe", str(whole_epoch_shard), str(report), "16"]
    run_together(two_nodes(launcher, probe_args, tmp_path))
    probe = json.loads(report.read_text())
    assert probe["world"] == 2 and [r["rank"] for r in probe["ranks"]] == [0, 1]
    first, second = (set(r["keys"]) for r in probe["ranks"])
    assert len(first) == len(second) == 16 and not first & second  # disjoint halves of the epoch
    assert probe["gathered"] == SAMPLES  # each rank's loss saw both nodes' features
    # The mean of the ranks' losses is the loss of one process holding all 32 pairs (computed here, no group).
    images, texts = (torch.stack(f) for f in zip(*map(key_features, [k for r in probe["ranks"] for k in r["keys"]])))
    whole = build_loss("clip")(images, texts, torch.tensor(10.0, dtype=torch.float64))
    assert probe["loss"] == pytest.approx(whole.item(), rel=1e-6)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_nodes_train_like_one_process_with_the_whole_batch(launcher, whole_epoch_shard, one_process, tmp_path):
    out = tmp_path / "two_nodes"
    logs = run_together(two_nodes(launcher, training_args(whole_epoch_shard, out, SAMPLES // 2), tmp_path))
    assert "2 rank(s)" in "".join(log.stdout for log in logs)
    expected, got = train_losses(one_process), train_losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), (step, got, expected)
    reference = torch.load(one_process / "clip.pt", weights_only=True)["state_dict"]
    state = torch.load(out / "clip.pt", weights_only=True)["state_dict"]
    assert state.keys() == reference.keys()
    assert_same_weights(state, reference)


def assert_same_weights(state: dict, reference: dict, tolerance: float = WEIGHT_TOLERANCE) -> None:
    """Every tensor within `tolerance` of the reference in relative norm (the float32 sums of a split batch
    round differently, and Adam's first steps magnify tiny gradients)."""
    gaps = {name: ((state[name] - tensor).norm() / tensor.norm().clamp_min(1e-12)).item()
            for name, tensor in reference.items()}
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= tolerance, (worst, gaps[worst])
