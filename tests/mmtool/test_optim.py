import math

import pytest
import torch
from torch import nn

from mmtool.optim import ParamGroupRule, WarmRestart, build_param_groups, cosine_with_warmup, schedule_with_restart


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.text = nn.Embedding(10, 4)
        self.text.token_embedding = nn.Parameter(torch.zeros(10, 4))
        self.logit_scale = nn.Parameter(torch.zeros(1))


def groups_by_name(groups):
    return {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["names"]}


def test_decay_excludes_biases_norms_embeddings_and_logit_scale():
    named = groups_by_name(build_param_groups(Toy(), 1e-3, 0.1, []))
    assert named["vision.0.weight"] == (1e-3, 0.1)
    for name in ["vision.0.bias", "vision.1.weight", "vision.1.bias", "text.token_embedding", "logit_scale"]:
        assert named[name] == (1e-3, 0.0), name


def test_rules_set_lr_and_lr_zero_freezes():
    model = Toy()
    groups = build_param_groups(model, 1e-3, 0.1, [ParamGroupRule(pattern=r"^text\.", lr=0.0),
                                                  ParamGroupRule(pattern=r"^vision\.0", lr=1e-4)])
    named = groups_by_name(groups)
    assert not any(name.startswith("text.") for name in named)
    assert not model.text.weight.requires_grad
    assert named["vision.0.weight"] == (1e-4, 0.1)
    assert named["vision.1.weight"] == (1e-3, 0.0)


def test_cosine_with_warmup_shape():
    f = cosine_with_warmup(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_warm_restart_runs_a_second_warmup_and_cosine_from_its_step():
    f = schedule_with_restart(warmup_steps=10, total_steps=200, restart=WarmRestart(step=150, warmup_steps=5, peak=0.4))
    # Before the restart: a whole warm-up + cosine over the first 150 steps, written out.
    assert f(9) == pytest.approx(1.0)
    assert f(80) == pytest.approx(0.5 * (1 + math.cos(math.pi * 70 / 140)))
    assert f(149) == pytest.approx(0.5 * (1 + math.cos(math.pi * 139 / 140)))
    # From it: a linear warm-up to 0.4 over 5 steps, then cosine to 0 at step 200.
    assert [f(s) for s in range(150, 155)] == pytest.approx([0.4 * k / 5 for k in range(1, 6)])
    assert f(175) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 20 / 45)))
    assert f(200) == pytest.approx(0.0)
    assert schedule_with_restart(10, 200)(80) == cosine_with_warmup(10, 200)(80)
