"""The two halves of a CLIP as stand-alone modules: what ONNX traces and the safetensors vision format stores."""
import torch
import torch.nn.functional as F
from torch import nn


class ImageEncoder(nn.Module):
    """Pixels from mmtool's eval transform [B, 3, S, S] -> unit-norm embeddings [B, D]."""

    def __init__(self, vision: nn.Module, image_projection: nn.Module):
        super().__init__()
        self.vision = vision
        self.image_projection = image_projection

    @classmethod
    def from_clip(cls, model) -> "ImageEncoder":
        return cls(model.vision, model.image_projection)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.vision(pixel_values)), dim=-1)  # [B, D]


class TextEncoder(nn.Module):
    """Token ids and attention mask [B, T] from mmtool's tokenizer -> unit-norm embeddings [B, D]."""

    def __init__(self, model):
        super().__init__()
        self.text = model.text
        self.text_projection = model.text_projection
        self.uses_attention_mask = model.uses_attention_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = self.text(input_ids, attention_mask) if self.uses_attention_mask else self.text(input_ids)
        return F.normalize(self.text_projection(features), dim=-1)  # [B, D]
