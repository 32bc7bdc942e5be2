"""Patch dropout (FLIP) in the ViT: CLS kept, training only, and replayed exactly by gradient caching."""
import pytest
import torch

from mmtool.errors import MmtoolError
from stage1_clip.config import LossConfig, ModelConfig, TextConfig, VisionConfig
from stage1_clip.grad_cache import LOSS_INPUTS, cached_step
from stage1_clip.loss import build_loss
from stage1_clip.model import CLIP
from stage1_clip.vit import VisionTransformer
from tests.stage1_clip.test_grad_cache import PlainEngine, grads


def tiny_clip(patch_dropout: float) -> CLIP:
    cfg = ModelConfig(embed_dim=8,
                      vision=VisionConfig(image_size=16, patch_size=4, width=16, layers=2, heads=2,
                                          patch_dropout=patch_dropout),
                      text=TextConfig(context_length=6, width=16, layers=1, heads=2))
    return CLIP(cfg, LossConfig(), vocab_size=20)


def test_kept_tokens_are_cls_plus_a_random_subset_of_patches():
    vit = VisionTransformer(16, 4, 8, 1, 2, patch_dropout=0.75).train()
    x = torch.arange(3 * 17 * 8, dtype=torch.float32).view(3, 17, 8)  # [B, 1+16, D]: rows are distinguishable
    torch.manual_seed(0)
    kept = vit.drop_patches(x)  # [3, 1+4, 8]
    assert kept.shape == (3, 5, 8)
    torch.testing.assert_close(kept[:, 0], x[:, 0])  # CLS first, always
    rows = [{int(r) for r in (kept[b, 1:, 0] - x[b, 0, 0]) // 8} for b in range(3)]
    assert all(len(r) == 4 and r <= set(range(1, 17)) for r in rows)
    assert len({frozenset(r) for r in rows}) > 1  # each image draws its own subset


def test_eval_mode_and_zero_rate_keep_every_patch():
    torch.manual_seed(0)
    vit = VisionTransformer(16, 4, 8, 1, 2, patch_dropout=0.5)
    images = torch.randn(2, 3, 16, 16)
    full = VisionTransformer(16, 4, 8, 1, 2)
    full.load_state_dict(vit.state_dict())
    vit.eval()
    torch.testing.assert_close(vit(images), full(images))
    vit.train()
    assert not torch.allclose(vit(images), full(images))


def test_bad_rate_is_a_config_error():
    with pytest.raises(MmtoolError, match="patch_dropout"):
        tiny_clip(1.0)
    cfg = ModelConfig(vision=VisionConfig(type="resnet", patch_dropout=0.5))
    with pytest.raises(MmtoolError, match="only the vit"):
        CLIP(cfg, LossConfig(), vocab_size=20)


@pytest.mark.slow
def test_gradient_caching_replays_the_dropped_patches():
    """Reference: the same micro-batches forwarded with autograd in the order of the first pass, one loss."""
    loss_fn = build_loss("clip")
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 16, 16, generator=gen, dtype=torch.float64)
    ids = torch.randint(4, 20, (8, 6), generator=gen)
    ids[:, -1] = 3
    micro = [(images[i:i + 4], ids[i:i + 4], torch.ones_like(ids[i:i + 4])) for i in (0, 4)]
    torch.manual_seed(0)
    model = tiny_clip(0.5).double().train()

    def reference(seed):
        model.zero_grad()
        torch.manual_seed(seed)
        outs = [model(*m) for m in micro]
        loss_fn(torch.cat([o["image_features"] for o in outs]), torch.cat([o["text_features"] for o in outs]),
                *(outs[0][n] for n in LOSS_INPUTS[2:])).backward()
        return grads(model)

    expected, other_draw = reference(7), reference(8)
    model.zero_grad()
    torch.manual_seed(7)
    cached_step(PlainEngine(model), loss_fn, micro)
    got = grads(model)
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-10, atol=1e-13, msg=name)
    assert not torch.allclose(got["vision.conv1.weight"], other_draw["vision.conv1.weight"])  # masks matter
