"""The model behind an index: a CLIP checkpoint (torch) or an mmtool export folder (onnx, or safetensors via
torch), each with the identity that keeps vectors of two different models out of one index and the style views
(stage1_clip/style_views.py) its images are read in: the checkpoint's eval.style_views, kept in an export's
manifest."""
from pathlib import Path

import torch

from mmtool.errors import MmtoolError
from mmtool.export.folder import MANIFEST, read_manifest, weights_sha256


class TorchClipEncoder:
    def __init__(self, model, tokenize, image_size: int, identity: str, style_views: list[str]):
        self.model, self.tokenize, self.image_size = model.inference_copy(), tokenize, image_size
        self.identity, self.style_views = identity, style_views

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values).float()  # [B, D]

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(*self.tokenize(texts)).float()  # [B, D]


class TorchImageEncoder:
    """A safetensors export-vision folder: image queries only."""

    def __init__(self, encoder, image_size: int, identity: str, style_views: list[str]):
        self.encoder, self.image_size, self.identity = encoder.eval(), image_size, identity
        self.style_views = style_views

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values).float()  # [B, D]

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise MmtoolError("this export holds the image encoder only (export-vision); text search needs a CLIP "
                          "checkpoint or an export-clip folder")


class OnnxEncoder:
    def __init__(self, folder: Path):
        from mmtool.export.onnx import OnnxClip

        self.runtime = OnnxClip(folder)
        self.image_size = self.runtime.manifest["image_size"]
        self.identity = self.runtime.manifest["weights_sha256"]
        self.style_views = self.runtime.manifest.get("style_views", [])  # older exports: the plain crop
        self.encode_images, self.encode_texts = self.runtime.encode_images, self.runtime.encode_texts


def load_encoder(model: str | Path):
    """clip.pt / clip.safetensors, or an onnx / safetensors export folder."""
    path = Path(model)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise MmtoolError(f"--model {path}: not an mmtool export folder (no {MANIFEST})")
        manifest = read_manifest(path)
        fmt, views = manifest["export_format"], manifest.get("style_views", [])  # older exports: the plain crop
        if fmt == "onnx":
            return OnnxEncoder(path)
        if fmt == "safetensors":
            from mmtool.export.safetensors_folder import load_clip_folder, load_image_encoder

            if manifest["kind"] == "clip":
                bundle = load_clip_folder(path)
                return TorchClipEncoder(bundle.model, bundle.tokenize, manifest["image_size"],
                                        manifest["weights_sha256"], views)
            encoder, vision_cfg = load_image_encoder(path)
            return TorchImageEncoder(encoder, vision_cfg.image_size, manifest["weights_sha256"], views)
        raise MmtoolError(f"--model {path}: a {fmt!r} export; index with the checkpoint or an onnx / safetensors "
                          f"export (transformers folders are for other tools)")
    from stage1_clip.checkpoint import load_clip

    bundle = load_clip(path)
    return TorchClipEncoder(bundle.model, bundle.tokenize, bundle.config.model.vision.image_size,
                            weights_sha256(bundle.model.state_dict()), bundle.config.eval.style_views)
