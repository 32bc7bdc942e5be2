"""Training states hold only what trains, and a resumed engine continues exactly."""
import json

import pytest
import torch
from torch import nn

from mmtool.engine import OptimSettings, TrainEngine
from mmtool.optim import ParamGroupRule
from mmtool.train_state import STATE_DIR, load_latest_state, save_rotating_state
from tests.stage1_clip.test_train_e2e import LAUNCHER_VARIABLES


class FrozenBackboneModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(64, 64)  # frozen by an lr-0 rule, like a locked tower or LLM
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.backbone(x))).square().mean()


def make_engine(tmp_path, seed: int) -> TrainEngine:
    torch.manual_seed(seed)
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": 0}}))
    settings = OptimSettings(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6, grad_clip=1.0,
                             warmup_steps=1, total_steps=10, rules=[ParamGroupRule(pattern="^backbone\\.", lr=0.0)])
    return TrainEngine(FrozenBackboneModel(), ds_config, micro_batch_size=8, optim=settings)


def train_steps(engine: TrainEngine, batches: list[torch.Tensor]) -> list[float]:
    losses = []
    for x in batches:
        loss = engine(x)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def test_state_leaves_out_frozen_weights_and_resumes_exactly(tmp_path, monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # restored afterwards: the engine sets them in-process
    batches = [torch.randn(8, 64, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    engine = make_engine(tmp_path, seed=0)
    train_steps(engine, batches[:3])
    save_rotating_state(engine, tmp_path, 3, {"progress": {"step": 3}}, keep=1)
    expected = train_steps(engine, batches[3:])

    saved = torch.load(tmp_path / STATE_DIR / "step3" / "mp_rank_00_model_states.pt", weights_only=False)
    assert set(saved["module"]) == {"head.weight", "head.bias"}

    resumed = make_engine(tmp_path, seed=0)  # rebuilt the way a run rebuilds it: same frozen weights
    assert load_latest_state(resumed, tmp_path)["progress"] == {"step": 3}
    assert train_steps(resumed, batches[3:]) == pytest.approx(expected, rel=1e-6)


def test_only_the_newest_states_are_kept(tmp_path, monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    engine = make_engine(tmp_path, seed=0)
    for step in (1, 2, 3):
        save_rotating_state(engine, tmp_path, step, {"progress": {"step": step}}, keep=2)
    assert sorted(p.name for p in (tmp_path / STATE_DIR).glob("step*")) == ["step2", "step3"]
