"""`--format onnx`: the image encoder (and, for export-clip, the text encoder) as ONNX graphs with a dynamic batch
dimension, run with onnxruntime; the tokenizer travels beside them so text queries need no checkpoint."""
from pathlib import Path

import numpy as np
import torch

from mmtool.errors import MmtoolError
from mmtool.export.folder import read_manifest, staged_folder, weights_sha256, write_manifest
from mmtool.export.standalone_towers import ImageEncoder, TextEncoder
from stage1_clip.checkpoint import tokenizer_extras

VISION, TEXT = "vision.onnx", "text.onnx"
OPSET = 18


def _export(module: torch.nn.Module, inputs: tuple, names: list[str], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = {name: {0: batch} for name in names}
    program = torch.onnx.export(module.eval(), inputs, input_names=names, output_names=["embeds"],
                                dynamic_shapes=dynamic_shapes, opset_version=OPSET, dynamo=True,
                                external_data=False, verbose=False)
    program.save(str(path))


def export_vision_onnx(bundle, source: Path, out: Path, kind: str = "vision") -> None:
    cfg = bundle.config.model
    size = cfg.vision.image_size
    with staged_folder(out) as stage, torch.no_grad():
        _export(ImageEncoder.from_clip(bundle.model), (torch.zeros(2, 3, size, size),), ["pixel_values"],
                stage / VISION)
        extra = {}
        if kind == "clip":
            ids, mask = bundle.tokenize(["a caption", "another, longer caption"])  # [2, T]
            _export(TextEncoder(bundle.model), (ids, mask), ["input_ids", "attention_mask"], stage / TEXT)
            for name, value in tokenizer_extras(bundle.tokenizer).items():
                path = stage / name
                path.write_bytes(value) if isinstance(value, bytes) else path.write_text(value)
            extra = {"context_length": cfg.text.context_length}
        write_manifest(stage, kind=kind, fmt="onnx", source=source,
                       weights_sha256=weights_sha256(bundle.model.state_dict()),
                       style_views=bundle.config.eval.style_views,
                       image_size=size, embed_dim=cfg.embed_dim, **extra)


def export_clip_onnx(bundle, source: Path, out: Path) -> None:
    export_vision_onnx(bundle, source, out, kind="clip")


class OnnxClip:
    """onnxruntime sessions of an ONNX export: encode_images(pixels) and, for a clip export, encode_texts(texts)."""

    def __init__(self, folder: Path, threads: int | None = None):
        import onnxruntime as ort

        folder = Path(folder)
        self.manifest = read_manifest(folder)
        if self.manifest["export_format"] != "onnx":
            raise MmtoolError(f"{folder}: a {self.manifest['export_format']!r} export, not onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.vision = ort.InferenceSession(str(folder / VISION), options, providers=["CPUExecutionProvider"])
        self.text = self.tokenizer = None
        if self.manifest["kind"] == "clip":
            self.text = ort.InferenceSession(str(folder / TEXT), options, providers=["CPUExecutionProvider"])
            self.tokenizer = _load_tokenizer(folder)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] float32 -> [B, D]."""
        (embeds,) = self.vision.run(None, {"pixel_values": pixel_values.numpy().astype(np.float32)})
        return torch.from_numpy(embeds)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.text is None:
            raise MmtoolError("this ONNX export holds the image encoder only (export-vision); text search needs "
                              "an export-clip folder")
        ids, mask = self.tokenizer(texts, self.manifest["context_length"])  # [B, T]
        (embeds,) = self.text.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        return torch.from_numpy(embeds)


def _load_tokenizer(folder: Path):
    if (folder / "tokenizer.model").is_file():
        from stage1_clip.tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer.load(folder / "tokenizer.model")
    from stage1_clip.hf_text import HFTokenizerAdapter

    return HFTokenizerAdapter((folder / "tokenizer.json").read_text())
