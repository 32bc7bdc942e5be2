"""An aligned vision-language model as one checkpoint, and the checks that keep its parts together.

The checkpoint (mmtool.checkpoint format, kind "vlm") holds the projector and the image tower's weights (and a
stage-3 model's tower-tag vocabulary embeddings, stage2_projector/tower_tags.py); the LLM, frozen and large, is
referenced: its `--llm` spec, a fingerprint of its embeddings and the token ids used in training. The record also
names the stage-1 checkpoint (sha256), feature layer, image size and normalisation. Loading on top of a different
LLM, or continuing from a different vision checkpoint, is refused.
"""
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mmtool.checkpoint import file_sha256, load_model, save_model
from mmtool.config import from_dict, to_dict
from mmtool.data.reading.images import CLIP_MEAN, CLIP_STD, eval_transform, load_image
from mmtool.errors import MmtoolError
from stage1_clip.checkpoint import load_clip
from stage1_clip.config import ClipConfig
from stage1_clip.heads import projection_head
from stage1_clip.towers import build_vision_tower
from stage2_projector.config import AlignConfig
from stage2_projector.features import PatchFeatures
from stage2_projector.llm import LoadedLlm, check_same_llm, load_llm
from stage2_projector.model import VisionLanguageModel
from stage2_projector.projector import build_projector
from stage2_projector.tower_tags import TowerTags

KIND = "vlm"
MODEL_FILE = "vlm.pt"  # inside a run folder
SAVED_PREFIXES = ("vision.", "projector.", "tower_tags.")  # the LLM is referenced, not copied


@dataclass
class VlmBundle:
    record: dict  # the checkpoint's config: see build_vlm
    model: VisionLanguageModel
    llm: LoadedLlm

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def num_image_tokens(self) -> int:
        return self.record["vision"]["num_image_tokens"]

    def preprocess(self, image_bytes: bytes) -> torch.Tensor:
        """Encoded image file -> [3, S, S] with the vision checkpoint's size and normalisation."""
        return eval_transform(load_image(image_bytes), self.record["vision"]["image_size"])


def build_vlm(cfg: AlignConfig, vision_path: str | Path, llm: LoadedLlm | None = None) -> VlmBundle:
    """A fresh model for align: the stage-1 tower (frozen by the config's param groups), a new projector, the LLM."""
    vision_path = Path(vision_path)
    clip = load_clip(vision_path)
    vision_cfg = clip.config.model.vision
    embedding = clip.model.image_projection if cfg.model.clip_embedding_token else None
    features = PatchFeatures(clip.model.vision, vision_cfg.type, cfg.model.feature_layer, embedding,
                             clip.config.model.embed_dim, cfg.model.token_grid)
    image_size = cfg.model.image_size or vision_cfg.image_size
    if vision_cfg.type == "vit" and image_size != vision_cfg.image_size:
        raise MmtoolError(f"model.image_size {image_size}: a ViT tower runs at the size it was trained at "
                          f"({vision_cfg.image_size}); only conv towers take another")
    llm = llm or load_llm(cfg.model.llm)
    hidden = llm.identity["hidden_size"]
    projector = build_projector(cfg.model.projector, features.width, hidden)
    record = {
        "align": to_dict(cfg),
        "vision": {"checkpoint": str(vision_path), "sha256": file_sha256(vision_path), "type": vision_cfg.type,
                   "feature_layer": cfg.model.feature_layer, "token_grid": cfg.model.token_grid,
                   "image_size": image_size,
                   "mean": CLIP_MEAN.tolist(), "std": CLIP_STD.tolist(), "feature_width": features.width,
                   "clip_embedding_token": cfg.model.clip_embedding_token,
                   "num_image_tokens": features.num_tokens(image_size)},
        "clip_config": to_dict(clip.config),
        "llm": llm.identity,
        "projector": {"type": cfg.model.projector, "in_dim": features.width, "out_dim": hidden},
    }
    model = VisionLanguageModel(features, projector, llm.model, llm.image_token_id)
    return VlmBundle(record, model, llm)


def save_vlm(path: Path, record: dict, state_dict: dict[str, torch.Tensor]) -> None:
    """Writes the tower and projector weights out of a full (gathered) state dict, with the record."""
    kept = {name: tensor for name, tensor in state_dict.items() if name.startswith(SAVED_PREFIXES)}
    save_model(path, KIND, record, kept)


def resolve_model_file(path: str | Path) -> Path:
    """A vlm.pt / .safetensors file, or a run folder holding vlm.pt."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def load_vlm(path: str | Path, llm: str | LoadedLlm | None = None) -> VlmBundle:
    """The aligned model; the LLM is the recorded one unless `llm` (a spec or a loaded LLM) names it, and any
    LLM must be the one the checkpoint was trained with."""
    path = resolve_model_file(path)
    payload = load_model(path, KIND)
    record = payload["config"]
    clip_config = from_dict(ClipConfig, record["clip_config"], where=f"{path}:clip_config")
    vision_cfg = replace(clip_config.model.vision, pretrained=False)  # weights come from the state dict
    tower = build_vision_tower(vision_cfg, clip_config.model.embed_dim)
    embed_dim = clip_config.model.embed_dim
    # Older records have no clip_embedding_token or token_grid field: they were made without them.
    embedding = (projection_head(clip_config.model.head, tower.output_width, embed_dim)
                 if record["vision"].get("clip_embedding_token") else None)
    features = PatchFeatures(tower, vision_cfg.type, record["vision"]["feature_layer"], embedding, embed_dim,
                             record["vision"].get("token_grid"))
    if not isinstance(llm, LoadedLlm):
        llm = load_llm(llm or record["llm"]["spec"])
    check_same_llm(record["llm"], llm.identity, str(path))
    projector = build_projector(record["projector"]["type"], record["projector"]["in_dim"],
                                record["projector"]["out_dim"])
    model = VisionLanguageModel(features, projector, llm.model, llm.image_token_id)
    if record.get("tower_tags"):
        model.tower_tags = TowerTags.from_record(record["tower_tags"], embed_dim)
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    missing = [name for name in missing if name.startswith(SAVED_PREFIXES)]
    if missing or unexpected:
        raise MmtoolError(f"{path}: weights do not fit the recorded model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return VlmBundle(record, model.eval(), llm)


def check_vision(record: dict, vision_path: str | Path, where: str) -> None:
    """Refuses a vision checkpoint other than the one the model was aligned on (by content hash)."""
    digest = file_sha256(vision_path)
    if digest != record["vision"]["sha256"]:
        raise MmtoolError(f"{where}: aligned on vision checkpoint {record['vision']['checkpoint']} "
                          f"(sha256 {record['vision']['sha256'][:12]}), but {vision_path} has sha256 {digest[:12]}")
