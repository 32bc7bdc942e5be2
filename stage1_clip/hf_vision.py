"""A Hugging Face CLIP or SigLIP image encoder as the image tower: its pooled output, `hidden_size` wide.

CLIP pools the class token after the post-LayerNorm, SigLIP with its attention-pool head. The tower is rebuildable
from what an mmtool checkpoint stores: the architecture from `config_dict()`, the weights and the input normalisation
(buffers) from the state dict.
"""
import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionModel, PreTrainedModel, SiglipVisionModel

from mmtool.data.reading.images import CLIP_MEAN, CLIP_STD
from mmtool.errors import MmtoolError

# family -> (image model class, pixel mean, pixel std it was trained with where the folder does not say)
FAMILIES = {
    "clip": (CLIPVisionModel, CLIP_MEAN.tolist(), CLIP_STD.tolist()),
    "siglip": (SiglipVisionModel, [0.5] * 3, [0.5] * 3),
}


def family(model_type: str, where: str) -> tuple:
    name = model_type.removesuffix("_vision_model")
    if name not in FAMILIES:
        raise MmtoolError(f"{where}: model type {model_type!r} is not an image encoder mmtool knows "
                          f"({', '.join(FAMILIES)})")
    return FAMILIES[name]


class HFVisionTower(nn.Module):
    def __init__(self, model: PreTrainedModel, mean: list[float], std: list[float], grad_checkpointing: bool = False):
        super().__init__()
        if getattr(model.config, "vision_use_head", True) is False:
            raise MmtoolError("model.vision.hf_path: this SigLIP has no pooling head (vision_use_head is false)")
        if grad_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        self.model = model
        self.output_width = model.config.hidden_size
        # CLIP-normalised pixels -> this model's normalisation, one fixed per-channel affine; buffers, so
        # checkpoints keep it.
        mean, std = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("input_scale", (torch.from_numpy(CLIP_STD) / std).view(1, 3, 1, 1))
        self.register_buffer("input_shift", ((torch.from_numpy(CLIP_MEAN) - mean) / std).view(1, 3, 1, 1))

    @classmethod
    def from_pretrained(cls, path: str | Path, grad_checkpointing: bool = False) -> "HFVisionTower":
        """Loads a local image-encoder folder, or the image half of a dual CLIP / SigLIP folder; never the network."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise MmtoolError(f"{path}: not a Hugging Face model folder (no config.json)")
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        config = getattr(config, "vision_config", config)
        model_class, mean, std = family(config.model_type, str(path))
        model = model_class.from_pretrained(path, config=config, local_files_only=True, dtype=torch.float32)
        preprocessor = path / "preprocessor_config.json"
        if preprocessor.is_file():
            stats = json.loads(preprocessor.read_text())
            mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
        return cls(model, mean, std, grad_checkpointing)

    @classmethod
    def from_config_dict(cls, config: dict, grad_checkpointing: bool = False) -> "HFVisionTower":
        """Same architecture, random weights: a checkpoint's state dict (normalisation included) is loaded next."""
        config = AutoConfig.for_model(**config)
        model_class, mean, std = family(config.model_type, "hf_vision_config.json")
        return cls(model_class(config), mean, std, grad_checkpointing)

    def config_dict(self) -> dict:
        return self.model.config.to_dict()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self.input_scale + self.input_shift  # [B, 3, H, W], the model's own normalisation
        # Position embeddings are resized when H, W differ from the model's image size (unchanged when equal).
        return self.model(pixel_values=x, interpolate_pos_encoding=True).pooler_output  # [B, D]
