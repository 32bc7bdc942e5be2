"""The CLIP dual encoder: an image tower and a text tower projected into one normalised space."""
import torch
import torch.nn.functional as F
from torch import nn

from mmtool.errors import MmtoolError
from stage1_clip.config import LossConfig, ModelConfig
from stage1_clip.heads import projection_head
from stage1_clip.towers import build_text_tower, build_vision_tower, inference_copy


class CLIP(nn.Module):
    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, vocab_size: int,
                 hf_text_config: dict | None = None, hf_vision_config: dict | None = None):
        super().__init__()
        self.vision = build_vision_tower(model_cfg.vision, model_cfg.embed_dim, hf_vision_config)
        self.text = build_text_tower(model_cfg.text, vocab_size, hf_text_config)
        if model_cfg.vision.type == "resnet":
            if model_cfg.head != "linear":
                raise MmtoolError(f"model.head: {model_cfg.head!r} needs a pooled image tower; the resnet's "
                                  f"attention pool projects to the embedding itself")
            # CLIP's ResNet ends in an attention pool whose output projection already maps to the embedding.
            self.image_projection = nn.Identity()
        else:
            self.image_projection = projection_head(model_cfg.head, self.vision.output_width, model_cfg.embed_dim)
        text_field = "model.head" if model_cfg.text_head is None else "model.text_head"
        self.text_projection = projection_head(model_cfg.text_projection_head, self.text.output_width,
                                               model_cfg.embed_dim, text_field)
        # Shape (1,), not a 0-dim scalar: DeepSpeed 0.19.8 cannot flatten 0-dim parameters.
        self.logit_scale = nn.Parameter(torch.full((1,), loss_cfg.init_logit_scale))
        self.logit_bias = (nn.Parameter(torch.full((1,), loss_cfg.init_logit_bias)) if loss_cfg.type == "siglip"
                           else None)
        self.max_logit_scale = loss_cfg.max_logit_scale
        self.uses_attention_mask = model_cfg.text.type == "hf"
        # Frozen towers' outputs read back in training (stage1_clip/feature_cache.py); None: computed live.
        # Training only: evaluation may run on fewer ranks than the cache's per-batch agreement needs.
        self.text_cache = self.image_cache = None

    def train(self, mode: bool = True) -> "CLIP":
        super().train(mode)
        for tower in (self.vision, self.text):
            if not any(p.requires_grad for p in tower.parameters()):
                tower.eval()  # a locked tower runs as at inference: no dropout, no BatchNorm statistic updates
        return self

    def compile_towers(self, **options) -> None:
        """torch.compile both towers in place: parameter names, and so checkpoints, stay as they are."""
        self.vision.compile(**options)
        self.text.compile(**options)

    def inference_copy(self) -> "CLIP":
        """An eval-mode copy for embedding, its EfficientNet tower folded (stage1_clip/towers.py)."""
        return inference_copy(self, "vision")

    def encode_image(self, images: torch.Tensor, views=None) -> torch.Tensor:
        """`views`: the rows' augmented views ([B] ViewRef, mmtool/data/reading/views.py), for the image cache."""
        if self.image_cache is not None and self.training:
            features = self.image_cache.features(self.vision, images, views)  # [B, Wv]
        else:
            features = self.vision(images)  # [B, Wv]
        return F.normalize(self.image_projection(features), dim=-1)  # [B, D]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.text_cache is not None and self.training:
            features = self.text_cache.features(self.text, input_ids, attention_mask, self.uses_attention_mask)
        elif self.uses_attention_mask:
            features = self.text(input_ids, attention_mask)  # [B, Wt]
        else:
            features = self.text(input_ids)  # [B, Wt]; pooled at the end-of-text token
        return F.normalize(self.text_projection(features), dim=-1)  # [B, D]

    def temperature_scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at exp(max): the clamp sits in the graph so it also holds under ZeRO-3."""
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()  # (1,)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                negative_ids: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None,
                image_views=None) -> dict:
        """negative_ids / negative_mask [B, K, T]: extra captions per image (mined hard negatives), encoded in
        the same text pass and returned as negative_text_features [B, K, D]; image_views: see encode_image."""
        outputs = {"image_features": self.encode_image(images, image_views), "logit_scale": self.temperature_scale(),
                   "logit_bias": self.logit_bias}
        if negative_ids is None:
            outputs["text_features"] = self.encode_text(input_ids, attention_mask)  # [B, D]
            return outputs
        batch, k = negative_ids.shape[:2]
        texts = self.encode_text(torch.cat([input_ids, negative_ids.flatten(0, 1)]),
                                 torch.cat([attention_mask, negative_mask.flatten(0, 1)]))  # [B + B*K, D]
        outputs["text_features"] = texts[:batch]  # [B, D]
        outputs["negative_text_features"] = texts[batch:].view(batch, k, -1)  # [B, K, D]
        return outputs
