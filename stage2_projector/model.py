"""The vision-language model: frozen image tower -> projector -> LLM input embeddings at the image placeholders.

Image tokens follow the Hugging Face LLaVA convention: the input ids hold one `<image>` placeholder per projected
feature, and the features replace the placeholders' embeddings in order, so the model exports as-is to
LlavaForConditionalGeneration.

Images come as pixels [B, 3, H, W] (chat, ask, export, a trainable tower) or as the frozen tower's features
[B, N, C] (training on a feature cache); with `feature_cache` set, pixels of a frozen tower are looked up there.
"""
import torch
import torch.nn.functional as F
from torch import nn

from mmtool.data.reading.images import to_crop
from mmtool.errors import MmtoolError
from stage1_clip.style_views import mean_view_embedding, view_stack
from stage2_projector.answer_loss import answer_loss
from stage2_projector.chat_format import IGNORE_INDEX
from stage2_projector.features import PatchFeatures


class VisionLanguageModel(nn.Module):
    def __init__(self, vision: PatchFeatures, projector: nn.Module, llm: nn.Module, image_token_id: int):
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.image_token_id = image_token_id
        self.feature_cache = None  # a stage2_projector.feature_cache.FeatureCache while training on a frozen tower
        self.tower_tags = None  # a stage2_projector.tower_tags.TowerTags when prompts carry the tower's tags
        self.answer_weighting = "token"  # the training loss's mean: per token or per conversation (answer_loss.py)

    def train(self, mode: bool = True) -> "VisionLanguageModel":
        super().train(mode)
        for part in (self.vision, self.projector, self.llm):
            if not any(p.requires_grad for p in part.parameters()):
                part.eval()  # frozen parts run as at inference: no dropout, BatchNorm statistics kept
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] or features [B, N, C] -> the projector's input [B, N, C]."""
        if images.ndim == 3:
            return images
        if self.feature_cache is None:
            return self.vision(images)  # [B, N, C]
        return self.feature_cache.features(images, self.vision)  # [B, N, C]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] or tower features [B, N, C] -> [B, N, D_llm] image token embeddings."""
        return self.projector(self.image_features(images).to(self._projector_dtype()))  # [B, N, D_llm]

    def tag_lines(self, images: torch.Tensor, noise: float = 0.0,
                  generator: torch.Generator | None = None) -> list[str]:
        """Pixels [B, 3, H, W] or features [B, N, C] -> each image's tower-tag line (stage2_projector/tower_tags.py),
        ranked from a noisy embedding when `noise` is set (training tags). Tags in style views need pixels."""
        was_training = self.vision.training
        self.vision.eval()  # tags are the tower's inference answer: no drop-connect, BatchNorm statistics kept
        with torch.no_grad():
            lines = self.tower_tags.lines(self.tag_embeddings(images.to(next(self.vision.parameters()).dtype)),
                                          noise, generator)
        self.vision.train(was_training)
        return lines

    def tag_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] or features [B, N, C] -> [B, E] unit CLIP image embeddings for the tags: the mean
        over the tags' style views (stage1_clip/style_views.py) of each image's re-rendered crop, or the embedding
        token's own vector without views."""
        views = self.tower_tags.style_views
        if not views:
            return self.vision.joint_embeddings(self.image_features(images))  # [B, E]
        if images.ndim == 3:
            raise MmtoolError("tower tags in style views are computed from an image's pixels, not tower features")
        pixels = torch.stack([view_stack(to_crop(image), views) for image in images])  # [B, V, 3, H, W]
        vision = self.vision.inference_copy()  # V tower passes per image: the folded tower's
        return mean_view_embedding(lambda view: vision.joint_embeddings(vision(view.to(images))), pixels)  # [B, E]

    def embed(self, input_ids: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """LLM input embeddings [B, T, D_llm] with the i-th image's features written, in order, over its
        placeholders; every sample must hold exactly N placeholders per image. `images`: pixels or features."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # [B, T, D]
        is_image = input_ids == self.image_token_id  # [B, T]
        if images is None:
            if is_image.any():
                raise MmtoolError("input ids hold image placeholders but no image was given")
            return embeds
        image_embeds = self.encode_images(images)  # [B_img, N, D]
        expected = image_embeds.shape[0] * image_embeds.shape[1]
        if int(is_image.sum()) != expected:
            raise MmtoolError(f"{int(is_image.sum())} image placeholder tokens for {image_embeds.shape[0]} image(s) "
                              f"of {image_embeds.shape[1]} tokens each")
        return embeds.masked_scatter(is_image.unsqueeze(-1), image_embeds.to(embeds.dtype))  # [B, T, D]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, images: torch.Tensor | None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> dict:
        """Without labels {"logits" [B, T, V]}. With labels {"loss_sum", "tokens", "loss"}: next-token cross-entropy
        over the supervised (label != -100) positions, summed, and averaged by `answer_weighting` (the training
        loss), and "logits" [K, V] of the K positions that predict them, in order. A packed batch
        (stage2_projector/packing.py) gives a [1, 1, T, T] attention mask and the samples' own position_ids."""
        return self.run_llm(self.embed(input_ids, images), attention_mask, labels, position_ids)

    def run_llm(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> dict:
        """The LLM on input embeddings [B, T, D]; see forward. Given labels, only the positions that predict a
        supervised token reach the output layer: with SmolLM2's 49k-word vocabulary it is a fifth of the compute
        per token, and most tokens (prompt, template, image) predict nothing."""
        predicts = None if labels is None else predicting_positions(labels)  # [B, T] bool
        logits = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, logits_to_keep=0 if predicts is None else predicts).logits
        if labels is None:
            return {"logits": logits}  # [B, T, V]
        targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]  # [K], row by row as the kept logits [K, V]
        token_losses = F.cross_entropy(logits.float(), targets, reduction="none")  # [K]
        tokens = torch.tensor(targets.numel(), device=targets.device)
        return {"logits": logits, "loss_sum": token_losses.sum(), "tokens": tokens,
                "loss": answer_loss(token_losses, labels, position_ids, self.answer_weighting)}

    def _projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels -> [B, T] bool: token t is kept when label t+1 is supervised (token t predicts it)."""
    predicts = torch.zeros_like(labels, dtype=torch.bool)  # [B, T]
    predicts[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return predicts
