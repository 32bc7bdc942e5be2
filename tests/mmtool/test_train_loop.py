"""The shared training loop with a tiny stage: non-finite steps are skipped, counted and bounded; schedule checks."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mmtool.engine import OptimSettings, TrainEngine, owned_values
from mmtool.errors import MmtoolError
from mmtool.train_cadence import steps_per_epoch
from mmtool.train_config import TrainSettings
from mmtool.train_loop import Stage, StepResult, train
from tests.helpers.distributed import free_port
from tests.stage1_clip.test_train_e2e import LAUNCHER_VARIABLES, clean_env


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.net(x).squeeze(-1) - y).square().mean()


class TinyStage(Stage):
    """Random regression batches; the micro-batches of the steps in `nan_steps` (0-based, on the ranks in
    `nan_ranks`) get a NaN input. Records the weights and lr after every step."""

    samples, batch_size = 64, 8

    def __init__(self, nan_steps=(), nan_ranks=(0,)):
        torch.manual_seed(0)
        self.model, self.nan_steps, self.nan_ranks = Regression(), set(nan_steps), set(nan_ranks)
        self.weights, self.lrs = [], []

    def batches(self, epoch: int, skip: int):
        count = self.samples // self.batch_size // torch.distributed.get_world_size()
        for index in range(skip, count):
            generator = torch.Generator().manual_seed(epoch * 1000 + index)
            inputs = torch.randn(self.batch_size, 8, generator=generator)
            yield inputs, torch.randn(self.batch_size, generator=generator)

    def step(self, engine: TrainEngine, micro_batches: list, step: int) -> StepResult:
        poisoned = step in self.nan_steps and torch.distributed.get_rank() in self.nan_ranks
        for x, y in micro_batches:
            loss = engine(x * math.nan if poisoned else x, y)
            engine.backward(loss)
            engine.step()
        self.weights.append(torch.cat([getattr(p, "ds_tensor", p).detach().flatten().float().clone()
                                       for p in self.model.parameters()]))
        self.lrs.append(engine.current_lr())
        return StepResult(loss, samples=self.batch_size * len(micro_batches))

    def evaluate(self, engine: TrainEngine) -> dict:
        return {"val_loss": 1.0}

    def save(self, out: Path, state_dict: dict) -> Path:
        torch.save(state_dict, out / "tiny.pt")
        return out / "tiny.pt"


def settings(**changes) -> TrainSettings:
    base = dict(epochs=1, lr=1e-2, warmup_steps=2, log_every=1, deepspeed="configs/deepspeed/fp32.json",
                eval_at_start=True)
    return TrainSettings(**{**base, **changes})


def records(out: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture
def in_process(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # restored afterwards: the engine sets them in-process


@pytest.mark.parametrize("deepspeed,accum", [("fp32", 1), ("zero2_bf16", 2), ("zero3_bf16", 1)])
def test_a_non_finite_step_is_skipped_and_counted(in_process, tmp_path, capsys, deepspeed, accum):
    stage = TinyStage(nan_steps={2})
    cfg = settings(deepspeed=f"configs/deepspeed/{deepspeed}.json", accum_steps=accum)
    train(stage, cfg, stage.batch_size, tmp_path, config={}, resume=False)

    steps = len(stage.weights)
    assert steps == TinyStage.samples // (TinyStage.batch_size * accum)
    assert torch.equal(stage.weights[2], stage.weights[1])  # the third step changed nothing ...
    assert stage.lrs[2] == stage.lrs[1]  # ... not even the lr schedule
    assert all(not torch.equal(stage.weights[i], stage.weights[i - 1]) for i in range(1, steps) if i != 2)
    assert [r["nonfinite_steps"] for r in records(tmp_path, "train")] == [0, 0] + [1] * (steps - 2)
    assert math.isnan(records(tmp_path, "train")[2]["loss"])
    assert [r["step"] for r in records(tmp_path, "val")] == [0, steps]  # before step 1, and at the end
    printed = capsys.readouterr().out
    assert "[eval step 0] val_loss=1" in printed and "step 3: non-finite loss, update skipped" in printed
    saved = torch.load(tmp_path / "tiny.pt", weights_only=True)
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())


def test_too_many_non_finite_steps_in_a_row_stop_the_run(in_process, tmp_path):
    # 1-based steps 2, 3 (two in a row), 4 fine, then 5, 6, 7: the third in a row ends the run.
    stage = TinyStage(nan_steps={1, 2, 4, 5, 6})
    with pytest.raises(MmtoolError, match=r"^3 steps in a row had a non-finite loss \(last: step 7\)"):
        train(stage, settings(max_nonfinite_steps=3), stage.batch_size, tmp_path, config={}, resume=False)
    assert not (tmp_path / "tiny.pt").exists()


def test_weights_with_nan_are_never_saved(in_process, tmp_path):
    torch.manual_seed(0)
    model = Regression()
    engine = TrainEngine(model, "configs/deepspeed/fp32.json", 8, OptimSettings(
        lr=1e-2, weight_decay=0.0, betas=(0.9, 0.99), eps=1e-8, grad_clip=1.0, warmup_steps=1, total_steps=4))
    with torch.no_grad():
        model.net[0].weight[0, 0] = math.inf
    with pytest.raises(MmtoolError, match="NaN or inf"):
        engine.save_state(tmp_path / "state", "step1", {})
    with pytest.raises(MmtoolError, match="NaN or inf"):
        engine.full_state_dict()
    assert not (tmp_path / "state").exists()


def test_zero3_padding_is_not_read_as_weights():
    """A 5-value weight over 2 ranks: slices of 3, the second padded with one never-written value."""
    weight = torch.arange(5.0)
    slices = []
    for rank in range(2):
        param = torch.nn.Parameter(torch.empty(0))
        param.ds_numel = weight.numel()
        param.ds_tensor = torch.full((3,), math.nan)
        owned = weight[3 * rank:3 * rank + 3]
        param.ds_tensor[:owned.numel()] = owned
        param.ds_tensor.ds_numel = 3
        slices.append(owned_values(param, rank))
    assert torch.equal(torch.cat(slices), weight)
    plain = torch.nn.Parameter(torch.ones(2))
    assert owned_values(plain, 1) is plain


def test_schedule_checks_come_before_any_division():
    with pytest.raises(MmtoolError, match=r"^train.accum_steps must be >= 1, got 0$"):
        steps_per_epoch(samples=64, batch_size=8, accum_steps=0, world=1)
    with pytest.raises(MmtoolError, match=r"^data.batch_size 8 x train.accum_steps 3 x 4 ranks exceeds the 64"):
        steps_per_epoch(samples=64, batch_size=8, accum_steps=3, world=4)
    assert steps_per_epoch(samples=64, batch_size=8, accum_steps=2, world=2) == 2


@pytest.mark.slow
@pytest.mark.distributed
def test_a_non_finite_loss_on_one_rank_skips_the_step_on_both(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "tests.mmtool.test_train_loop", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        weights = torch.load(tmp_path / f"weights{rank}.pt", weights_only=True)
        assert torch.equal(weights[1], weights[0]) and not torch.equal(weights[2], weights[1]), rank
    assert [r["nonfinite_steps"] for r in records(tmp_path, "train")] == [0, 1, 1, 1]


if __name__ == "__main__":  # one rank of the two-rank test: only rank 1 sees a NaN, at the second step
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    two_ranks = TinyStage(nan_steps={1}, nan_ranks={1})
    train(two_ranks, settings(deepspeed="configs/deepspeed/zero2_bf16.json"), two_ranks.batch_size, out, {}, False)
    torch.save(two_ranks.weights, out / f"weights{torch.distributed.get_rank()}.pt")
    from mmtool import distributed

    distributed.exit_cleanly()
