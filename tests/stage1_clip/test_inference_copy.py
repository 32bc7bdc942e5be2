"""CLIP.inference_copy: the embeddings of the model it copies (float64, to rounding) from a folded EfficientNet
tower, while the model itself keeps its modules, parameter names, gradients and mode."""
import torch

from stage1_clip.config import LossConfig, ModelConfig, TextConfig, VisionConfig
from stage1_clip.model import CLIP
from tests.stage1_clip.test_folded_trunk import random_statistics_tower

TEXT = TextConfig(type="transformer", context_length=16, width=32, layers=1, heads=4)


def effnet_clip() -> CLIP:
    vision = VisionConfig(type="efficientnet_lite0", pretrained=False, image_size=40)
    model = CLIP(ModelConfig(embed_dim=16, vision=vision, text=TEXT), LossConfig(), vocab_size=50).double()
    model.vision.load_state_dict(random_statistics_tower().state_dict())  # BatchNorm far from the identity
    return model


def test_the_copy_embeds_as_the_model_does_and_leaves_it_as_it_was():
    model = effnet_clip().train()
    names = [name for name, _ in model.named_parameters()]
    images = torch.randn(3, 3, 40, 40, dtype=torch.float64)  # [B, 3, H, W]
    copied = model.inference_copy()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copied.vision.modules())  # folded away
    assert not copied.training and not any(p.requires_grad for p in copied.parameters())
    assert model.training and [name for name, _ in model.named_parameters()] == names
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(copied.encode_image(images), model.encode_image(images), atol=1e-10)
        ids, mask = torch.randint(0, 50, (2, 16)), torch.ones(2, 16, dtype=torch.long)
        assert torch.equal(copied.encode_text(ids, mask), model.encode_text(ids, mask))
