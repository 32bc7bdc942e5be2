"""Patch features of a stage-1 image tower at a chosen layer: what the projector turns into image tokens.

ViT: hidden states [embeddings after ln_pre, block 1, ..., block L] without the CLS token (LLaVA's "patch tokens
only"). EfficientNet-Lite0: the feature maps [stem, block 0, ..., block 15, head], each read as h*w tokens.
`layer` indexes these lists the Python way (-2 = second to last).
"""
import torch
from torch import nn

from mmtool.errors import MmtoolError

SUPPORTED = ("vit", "efficientnet_lite0")


class PatchFeatures(nn.Module):
    def __init__(self, tower: nn.Module, tower_type: str, layer: int):
        super().__init__()
        if tower_type not in SUPPORTED:
            raise MmtoolError(f"vision tower type {tower_type!r}: no patch features for stage 2 "
                              f"(supported: {', '.join(SUPPORTED)})")
        self.tower, self.tower_type = tower, tower_type
        widths = self.layer_widths()
        if not -len(widths) <= layer < len(widths):
            raise MmtoolError(f"model.feature_layer {layer}: the {tower_type} tower has {len(widths)} hidden states "
                              f"(valid {-len(widths)} .. {len(widths) - 1})")
        self.layer = layer
        self.width = widths[layer]

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
        """[B, 3, H, W] CLIP-normalised images -> [B, N, width]."""
        if self.tower_type == "vit":
            return self.tower.forward_hidden_states(images)[self.layer][:, 1:]  # [B, N, D], CLS dropped
        feature_map = self._efficientnet_maps(images)[self.layer]  # [B, C, h, w]
        return feature_map.flatten(2).transpose(1, 2)  # [B, h*w, C]

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
