"""`--format hf`: folders plain transformers loads (CLIPVisionModelWithProjection, or CLIPModel with its
tokenizer), each with the image processor that matches mmtool's eval preprocessing."""
from pathlib import Path

from transformers import CLIPModel, CLIPVisionModelWithProjection

from mmtool.errors import MmtoolError
from mmtool.export.folder import staged_folder, weights_sha256, write_manifest
from mmtool.export.hf_clip import (clip_to_hf, image_processor, require_linear_head,
                                   vision_model_with_projection_to_hf)
from mmtool.export.hf_tokenizer import sentencepiece_to_hf
from stage1_clip.tokenizer import SentencePieceTokenizer


def _load_exact(model, state_dict: dict) -> None:
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    persistent_missing = [k for k in missing if not k.endswith("position_ids")]
    if persistent_missing or unexpected:  # a mapping bug, never user input
        raise RuntimeError(f"HF CLIP mapping mismatch: missing {persistent_missing}, unexpected {unexpected}")


def export_vision_hf(bundle, source: Path, out: Path) -> None:
    cfg = bundle.config.model
    require_linear_head(cfg)
    config, state = vision_model_with_projection_to_hf(bundle.model.vision, cfg.vision, bundle.model.image_projection)
    model = CLIPVisionModelWithProjection(config).eval()
    _load_exact(model, state)
    with staged_folder(out) as stage:
        model.save_pretrained(stage)
        image_processor(cfg.vision.image_size).save_pretrained(stage)
        write_manifest(stage, kind="vision", fmt="hf", source=source,
                       weights_sha256=weights_sha256(bundle.model.state_dict()),
                       style_views=bundle.config.eval.style_views,
                       image_size=cfg.vision.image_size, embed_dim=cfg.embed_dim)


def export_clip_hf(bundle, source: Path, out: Path) -> None:
    cfg = bundle.config.model
    if not isinstance(bundle.tokenizer, SentencePieceTokenizer):
        raise MmtoolError(f"{source}: model.text.type is {cfg.text.type!r}; only mmtool's own text transformer "
                          f"becomes a CLIPModel, export this one with --format safetensors")
    require_linear_head(cfg)
    config, state = clip_to_hf(bundle.model, cfg)
    model = CLIPModel(config).eval()
    _load_exact(model, state)
    with staged_folder(out) as stage:
        model.save_pretrained(stage)
        image_processor(cfg.vision.image_size).save_pretrained(stage)
        sentencepiece_to_hf(bundle.tokenizer, cfg.text.context_length).save_pretrained(stage)
        write_manifest(stage, kind="clip", fmt="hf", source=source,
                       weights_sha256=weights_sha256(bundle.model.state_dict()),
                       style_views=bundle.config.eval.style_views,
                       image_size=cfg.vision.image_size, embed_dim=cfg.embed_dim,
                       context_length=cfg.text.context_length)
