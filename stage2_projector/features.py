"""Patch features of a stage-1 image tower at a chosen layer: what the projector turns into image tokens.

ViT: hidden states [embeddings after ln_pre, block 1, ..., block L] without the CLS token (LLaVA's "patch tokens
only"). EfficientNet-Lite0: the feature maps [stem, block 0, ..., block 15, head], each read as h*w tokens.
`layer` indexes these lists the Python way (-2 = second to last). With `grid` g the patch tokens are average-pooled
to g x g (adaptive: overlapping windows when the map is not a multiple of g), so a larger input or an earlier layer
reaches the LLM without more tokens; the embedding token and the tower's pooled output see the full map.

With `embedding` (the CLIP model's image projection), one more token follows the patch tokens: the tower's pooled
output projected into CLIP's joint space and L2-normalised, the vector its zero-shot and retrieval answers come
from. The two kinds keep apart channels: patch tokens are [features, 0...], the embedding token [0..., embedding],
so a projector's first linear layer maps each kind with its own weights.
"""
import torch
import torch.nn.functional as F
from torch import nn

from mmtool.errors import MmtoolError
from stage1_clip.towers import inference_copy

SUPPORTED = ("vit", "efficientnet_lite0")


class PatchFeatures(nn.Module):
    def __init__(self, tower: nn.Module, tower_type: str, layer: int, embedding: nn.Module | None = None,
                 embed_dim: int = 0, grid: int | None = None):
        super().__init__()
        if tower_type not in SUPPORTED:
            raise MmtoolError(f"vision tower type {tower_type!r}: no patch features for stage 2 "
                              f"(supported: {', '.join(SUPPORTED)})")
        self.tower, self.tower_type = tower, tower_type
        widths = self.layer_widths()
        if not -len(widths) <= layer < len(widths):
            raise MmtoolError(f"model.feature_layer {layer}: the {tower_type} tower has {len(widths)} hidden states "
                              f"(valid {-len(widths)} .. {len(widths) - 1})")
        if grid is not None and grid < 1:
            raise MmtoolError(f"model.token_grid {grid}: needs at least a 1 x 1 grid (or null: the layer's own)")
        self.layer, self.grid = layer, grid
        self.embedding, self.embed_dim = embedding, embed_dim if embedding is not None else 0
        self.patch_width = widths[layer]
        self.width = self.patch_width + self.embed_dim

    def layer_widths(self) -> list[int]:
        if self.tower_type == "vit":
            return [self.tower.output_width] * (len(self.tower.transformer.blocks) + 1)
        net = self.tower.net
        return [net._bn0.num_features] + [block._bn2.num_features for block in net._blocks] + [net._bn1.num_features]

    def num_tokens(self, image_size: int) -> int:
        """Image tokens per image at this layer (one forward pass of a blank image: exact for any padding)."""
        with torch.no_grad():
            was_training = self.training
            self.eval()
            tokens = self(torch.zeros(1, 3, image_size, image_size)).shape[1]
            self.train(was_training)
        return tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] CLIP-normalised images -> [B, N, width] (N + 1 tokens with the embedding token)."""
        if self.tower_type == "vit":
            states = self.tower.forward_hidden_states(images)
            patches = states[self.layer][:, 1:]  # [B, N, D], CLS dropped
            side = int(round(patches.shape[1] ** 0.5))
            grid_map = patches.transpose(1, 2).unflatten(2, (side, side))  # [B, D, s, s]
            pooled = self.tower.ln_post(states[-1][:, 0])  # [B, D]: the tower's own output (as its forward)
        else:
            maps = self._efficientnet_maps(images)
            grid_map = maps[self.layer]  # [B, C, h, w]
            pooled = maps[-1].mean(dim=(2, 3))  # [B, 1280]: the tower's own output (global average pool)
        if self.grid is not None:
            if self.grid > min(grid_map.shape[-2:]):
                raise MmtoolError(f"model.token_grid {self.grid}: larger than layer {self.layer}'s "
                                  f"{grid_map.shape[-2]}x{grid_map.shape[-1]} map at this image size (pooling would "
                                  "repeat tokens); use at most the map's side or a larger model.vision.image_size")
            grid_map = F.adaptive_avg_pool2d(grid_map, self.grid)  # [B, C, g, g]
        patches = grid_map.flatten(2).transpose(1, 2)  # [B, h*w or g*g, C]
        if self.embedding is None:
            return patches
        # Unit-norm embeddings have entries near 1/sqrt(E): scaled to unit RMS, like the patch features.
        head_dtype = next(self.embedding.parameters()).dtype
        joint = F.normalize(self.embedding(pooled.to(head_dtype)), dim=-1) * self.embed_dim ** 0.5
        patch_part = F.pad(patches, (0, self.embed_dim))  # [B, N, C + E]
        joint_part = F.pad(joint.to(patches.dtype), (self.patch_width, 0)).unsqueeze(1)  # [B, 1, C + E]
        return torch.cat([patch_part, joint_part], dim=1)  # [B, N + 1, C + E]

    def inference_copy(self) -> "PatchFeatures":
        """An eval-mode copy for computing without training (tower tags in style views), its EfficientNet tower
        folded (stage1_clip/towers.py)."""
        return inference_copy(self, "tower")

    def joint_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N + 1, C + E] features -> [B, E]: the embedding token's vector as CLIP's unit image embedding."""
        if self.embedding is None:
            raise MmtoolError("this model has no CLIP embedding token (align's model.clip_embedding_token: true)")
        return features[:, -1, self.patch_width:] / self.embed_dim ** 0.5  # [B, E]

    def _efficientnet_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The package's extract_features, keeping every stage's output (drop-connect as it does in training)."""
        tower, net = self.tower, self.tower.net
        x = tower.lite_input(images)  # [B, 3, H, W]
        x = net._swish(net._bn0(net._conv_stem(x)))
        maps = [x]
        rate = net._global_params.drop_connect_rate
        for index, block in enumerate(net._blocks):
            x = block(x, drop_connect_rate=rate * index / len(net._blocks) if rate else rate)
            maps.append(x)
        maps.append(net._swish(net._bn1(net._conv_head(x))))
        return maps
