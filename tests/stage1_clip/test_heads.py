"""Projection heads (stage1_clip/heads.py): the MLP against its formula, and the configs they refuse."""
import math

import pytest
import torch

from mmtool.errors import MmtoolError
from stage1_clip.config import LossConfig, ModelConfig, TextConfig, VisionConfig
from stage1_clip.heads import projection_head
from stage1_clip.model import CLIP

TINY_TEXT = TextConfig(context_length=8, width=16, layers=1, heads=2)


def test_mlp_head_equals_its_formula_in_float64():
    torch.manual_seed(0)
    head = projection_head("mlp", 6, 4).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    hidden, output = head[0], head[2]
    pre = x @ hidden.weight.T + hidden.bias  # [5, 6]
    gelu = 0.5 * pre * (1 + torch.erf(pre / math.sqrt(2)))
    assert torch.allclose(head(x), gelu @ output.weight.T, atol=1e-12, rtol=0)
    assert output.bias is None


def test_clip_with_mlp_heads_projects_both_towers():
    cfg = ModelConfig(embed_dim=8, head="mlp", vision=VisionConfig(image_size=16, patch_size=8, width=12, layers=1,
                                                                   heads=2), text=TINY_TEXT)
    model = CLIP(cfg, LossConfig(), vocab_size=30)
    names = {name for name, _ in model.named_parameters() if "projection" in name}
    assert names == {f"{tower}_projection.{layer}.{kind}" for tower in ("image", "text") for layer, kinds in
                     (("0", ("weight", "bias")), ("2", ("weight",))) for kind in kinds}
    out = model(torch.randn(2, 3, 16, 16), torch.randint(0, 30, (2, 8)), torch.ones(2, 8, dtype=torch.long))
    assert out["image_features"].shape == out["text_features"].shape == (2, 8)


def test_text_head_overrides_the_head_on_the_text_tower_only():
    cfg = ModelConfig(embed_dim=8, head="mlp", text_head="linear",
                      vision=VisionConfig(image_size=16, patch_size=8, width=12, layers=1, heads=2), text=TINY_TEXT)
    model = CLIP(cfg, LossConfig(), vocab_size=30)
    assert isinstance(model.image_projection, torch.nn.Sequential)
    assert isinstance(model.text_projection, torch.nn.Linear) and model.text_projection.weight.shape == (8, 16)
    with pytest.raises(MmtoolError, match="model.text_head: unknown head 'deep'"):
        CLIP(ModelConfig(embed_dim=8, text_head="deep", text=TINY_TEXT), LossConfig(), vocab_size=30)


def test_unknown_head_and_an_mlp_on_the_resnet_are_refused():
    with pytest.raises(MmtoolError, match="model.head: unknown head 'deep'"):
        CLIP(ModelConfig(embed_dim=8, head="deep", text=TINY_TEXT), LossConfig(), vocab_size=30)
    resnet = VisionConfig(type="resnet", image_size=32, width=16, heads=2, stage_blocks=[1, 1, 1, 1])
    with pytest.raises(MmtoolError, match="model.head: 'mlp'.*resnet"):
        CLIP(ModelConfig(embed_dim=8, head="mlp", vision=resnet, text=TINY_TEXT), LossConfig(), vocab_size=30)
