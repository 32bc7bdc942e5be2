"""`--format safetensors`: plain safetensors weights + a small JSON config that mmtool rebuilds the model from.
Works for every tower type (ResNet, EfficientNet and HF towers included), which the hf format cannot carry."""
import json
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from mmtool.config import from_dict, to_dict
from mmtool.errors import MmtoolError
from mmtool.export.folder import read_manifest, staged_folder, weights_sha256, write_manifest
from mmtool.export.standalone_towers import ImageEncoder
from stage1_clip.checkpoint import ClipBundle, clip_extras, clip_from_parts
from stage1_clip.config import VisionConfig
from stage1_clip.heads import projection_head
from stage1_clip.towers import build_vision_tower

WEIGHTS, CONFIG = "model.safetensors", "config.json"
EXTRA_FILES = ("tokenizer.model", "tokenizer.json", "hf_text_config.json", "hf_vision_config.json")


def _write_extras(folder: Path, extras: dict) -> None:
    for name, value in extras.items():
        path = folder / name
        path.write_bytes(value) if isinstance(value, bytes) else path.write_text(value)


def _read_extras(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() if name == "tokenizer.model" else (folder / name).read_text()
            for name in EXTRA_FILES if (folder / name).is_file()}


def export_vision_safetensors(bundle, source: Path, out: Path) -> None:
    cfg = bundle.config.model
    encoder = ImageEncoder.from_clip(bundle.model)
    with staged_folder(out) as stage:
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(stage / WEIGHTS))
        config = {"format": "mmtool.image_encoder/1", "embed_dim": cfg.embed_dim, "head": cfg.head,
                  "vision": to_dict(cfg.vision)}
        (stage / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        _write_extras(stage, {k: v for k, v in clip_extras(bundle.config, bundle.tokenizer, bundle.model).items()
                              if k == "hf_vision_config.json"})
        write_manifest(stage, kind="vision", fmt="safetensors", source=source,
                       weights_sha256=weights_sha256(bundle.model.state_dict()),
                       style_views=bundle.config.eval.style_views,
                       image_size=cfg.vision.image_size, embed_dim=cfg.embed_dim)


def export_clip_safetensors(bundle, source: Path, out: Path) -> None:
    cfg = bundle.config
    with staged_folder(out) as stage:
        save_file({k: v.contiguous() for k, v in bundle.model.state_dict().items()}, str(stage / WEIGHTS))
        (stage / CONFIG).write_text(json.dumps({"format": "mmtool.clip/1", "clip": to_dict(cfg)}, indent=2) + "\n")
        _write_extras(stage, clip_extras(cfg, bundle.tokenizer, bundle.model))
        write_manifest(stage, kind="clip", fmt="safetensors", source=source,
                       weights_sha256=weights_sha256(bundle.model.state_dict()),
                       style_views=bundle.config.eval.style_views,
                       image_size=cfg.model.vision.image_size, embed_dim=cfg.model.embed_dim,
                       context_length=cfg.model.text.context_length)


def _read_config(folder: Path, expected: str) -> dict:
    manifest = read_manifest(folder)
    if manifest["export_format"] != "safetensors":
        raise MmtoolError(f"{folder}: a {manifest['export_format']!r} export, not safetensors")
    config = json.loads((folder / CONFIG).read_text())
    if config.get("format") != expected:
        raise MmtoolError(f"{folder / CONFIG}: format {config.get('format')!r}, expected {expected!r}")
    return config


def load_image_encoder(folder: Path) -> tuple[ImageEncoder, VisionConfig]:
    """The image encoder of a safetensors export (vision or clip) with its tower config."""
    folder = Path(folder)
    if read_manifest(folder)["kind"] == "clip":
        bundle = load_clip_folder(folder)
        return ImageEncoder.from_clip(bundle.model).eval(), bundle.config.model.vision
    config = _read_config(folder, "mmtool.image_encoder/1")
    vision_cfg = replace(from_dict(VisionConfig, config["vision"], where=f"{folder / CONFIG}:vision"),
                         pretrained=False)  # the weights come from the export
    extras = _read_extras(folder)
    hf_config = json.loads(extras["hf_vision_config.json"]) if "hf_vision_config.json" in extras else None
    tower = build_vision_tower(vision_cfg, config["embed_dim"], hf_config)
    # CLIP's ResNet already projects to the embedding in its attention pool (stage1_clip/model.py); exports made
    # before model.head existed have linear heads.
    projection = (nn.Identity() if vision_cfg.type == "resnet"
                  else projection_head(config.get("head", "linear"), tower.output_width, config["embed_dim"]))
    encoder = ImageEncoder(tower, projection)
    encoder.load_state_dict(load_file(str(folder / WEIGHTS)))
    return encoder.eval(), vision_cfg


def load_clip_folder(folder: Path) -> ClipBundle:
    folder = Path(folder)
    config = _read_config(folder, "mmtool.clip/1")
    return clip_from_parts(config["clip"], _read_extras(folder), load_file(str(folder / WEIGHTS)), where=str(folder))
