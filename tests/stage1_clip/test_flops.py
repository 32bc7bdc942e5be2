"""The analytic CLIP FLOP count (stage1_clip/flops.py) against torch's own FlopCounterMode on tiny models."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from stage1_clip.config import LossConfig, ModelConfig, TextConfig, VisionConfig
from stage1_clip.flops import forward_flops, image_tower_flops, text_tower_flops, train_step_flops
from stage1_clip.loss import ClipLoss
from stage1_clip.model import CLIP

CONFIGS = {
    "square": ModelConfig(embed_dim=24, vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4),
                          text=TextConfig(context_length=12, width=16, layers=3, heads=2)),
    "odd_mlp": ModelConfig(embed_dim=8, vision=VisionConfig(image_size=24, patch_size=6, width=12, layers=1, heads=3,
                                                            mlp_ratio=2.5),
                           text=TextConfig(context_length=7, width=20, layers=2, heads=5, mlp_ratio=3.0)),
    "mlp_head": ModelConfig(embed_dim=8, head="mlp", vision=VisionConfig(image_size=16, patch_size=8, width=12,
                                                                         layers=1, heads=3),
                            text=TextConfig(context_length=6, width=10, layers=1, heads=2)),
    "mlp_image_linear_text": ModelConfig(embed_dim=8, head="mlp", text_head="linear",
                                         vision=VisionConfig(image_size=16, patch_size=8, width=12, layers=1, heads=3),
                                         text=TextConfig(context_length=6, width=10, layers=1, heads=2)),
}


def counted_flops(cfg: ModelConfig, batch: int, backward: bool) -> tuple[int, dict]:
    """FLOPs torch counts for one step; the math SDPA backend so attention shows up as countable bmm calls."""
    torch.manual_seed(0)
    model = CLIP(cfg, LossConfig(), vocab_size=40)
    images = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size)
    tokens = torch.randint(4, 40, (batch, cfg.text.context_length))
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        out = model(images, tokens, torch.ones_like(tokens))
        loss = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
        if backward:
            loss.backward()
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), by_module


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_flops_equal_torch_count_per_tower(name):
    cfg, batch = CONFIGS[name], 3
    total, by_module = counted_flops(cfg, batch, backward=False)
    assert by_module["CLIP.vision"] + by_module["CLIP.image_projection"] == batch * image_tower_flops(cfg)
    assert by_module["CLIP.text"] + by_module["CLIP.text_projection"] == batch * text_tower_flops(cfg)
    assert total == forward_flops(cfg, batch)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_train_step_flops_equal_torch_count_with_backward(name):
    cfg, batch = CONFIGS[name], 5
    total, _ = counted_flops(cfg, batch, backward=True)
    assert total == train_step_flops(cfg, batch)
    assert train_step_flops(cfg, batch) < 3 * forward_flops(cfg, batch)  # no gradient for the pixels


def test_vit_b16_image_tower_matches_published_gflops():
    """ViT-B/16 at 224 px is tabulated as ~17.6 "GFLOPs" by counters that count a multiply-add once (fvcore)."""
    from mmtool.config import load_config
    from stage1_clip.config import ClipConfig

    cfg = load_config(ClipConfig, "configs/clip/vit_b16.yaml").model
    assert image_tower_flops(cfg) / 2 / 1e9 == pytest.approx(17.6, rel=0.01)
