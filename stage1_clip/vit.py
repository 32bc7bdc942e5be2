"""CLIP's Vision Transformer image tower: patches + class token -> pre-norm transformer -> the CLS token.

Patch dropout (FLIP): in training, each image keeps a random (1 - patch_dropout) share of its patch tokens (CLS is
always kept), which cuts the transformer's cost about in proportion. The draw uses torch's global generator, which
gradient caching replays, so both passes of a cached step drop the same patches.
"""
import torch
from torch import nn

from stage1_clip.attention import Transformer


class VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0, grad_checkpointing: bool = False, patch_dropout: float = 0.0):
        super().__init__()
        assert image_size % patch_size == 0, f"image_size {image_size} is not a multiple of patch_size {patch_size}"
        assert 0.0 <= patch_dropout < 1.0, f"patch_dropout {patch_dropout} is not in [0, 1)"
        self.output_width = width
        self.patch_dropout = patch_dropout
        num_patches = (image_size // patch_size) ** 2
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(num_patches + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, causal=False,
                                       grad_checkpointing=grad_checkpointing)
        self.ln_post = nn.LayerNorm(width)

    def forward_hidden_states(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[embeddings after ln_pre, block 1, ..., block L], each [B, 1+N, width]; LLaVA takes features from [-2]."""
        x = images.to(self.conv1.weight.dtype)  # under pure-bf16 training the weights are bf16
        x = self.conv1(x)  # [B, D, H/p, W/p]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        # The residual stream keeps the patch embedding's dtype (bf16 under autocast, as open_clip's): an fp32 one
        # makes eager backward save 7.5 MiB more a ViT-B/16 sample (bench/memory_plan.py, docs/scaling.md).
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, D]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B, 1+N, D]
        if self.training and self.patch_dropout > 0:
            x = self.drop_patches(x)  # [B, 1+n, D], n = kept patches
        return self.transformer(self.ln_pre(x))

    def drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Keeps CLS and a random subset of max(1, round((1 - p) N)) patches per image (positions already added)."""
        batch, patches = x.shape[0], x.shape[1] - 1
        keep = max(1, round((1 - self.patch_dropout) * patches))
        kept = torch.rand(batch, patches, device=x.device).argsort(dim=1)[:, :keep] + 1  # [B, n], 1-based
        kept = torch.cat([torch.zeros(batch, 1, dtype=kept.dtype, device=x.device), kept], dim=1)  # [B, 1+n]
        return x.gather(1, kept[..., None].expand(-1, -1, x.shape[2]))  # [B, 1+n, D]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.forward_hidden_states(images)[-1]  # [B, 1+N, D]
        return self.ln_post(x[:, 0])  # [B, D]
