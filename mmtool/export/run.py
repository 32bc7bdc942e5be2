"""`mmtool export-vision` / `export-clip`: a checkpoint into one export format."""
from pathlib import Path

from mmtool.config import to_dict
from mmtool.errors import MmtoolError
from mmtool.export.model_card import write_model_card
from mmtool.progress import StepBar
from stage1_clip.checkpoint import load_clip

FORMATS = ("hf", "onnx", "safetensors")


def find_exporter(fmt: str, what: str):
    """The exporter of `what` (vision | clip) in format `fmt`. Imported on use (transformers and onnx are slow to
    import), by import statements so that the import contract (.importlinter) sees them."""
    if fmt == "hf":
        from mmtool.export.hf_folder import export_clip_hf, export_vision_hf

        return export_vision_hf if what == "vision" else export_clip_hf
    if fmt == "onnx":
        from mmtool.export.onnx import export_clip_onnx, export_vision_onnx

        return export_vision_onnx if what == "vision" else export_clip_onnx
    if fmt == "safetensors":
        from mmtool.export.safetensors_folder import export_clip_safetensors, export_vision_safetensors

        return export_vision_safetensors if what == "vision" else export_clip_safetensors
    raise MmtoolError(f"--format {fmt!r}: unknown (choose from {', '.join(FORMATS)})")


def export(checkpoint: Path, what: str, fmt: str, out: Path) -> None:
    """what: vision (image tower + projection) | clip (both towers). The folder gets a model card (README.md).
    A bar on a terminal: the default CLIP took 8 s as safetensors, 24 s as ONNX, on 2 CPU cores."""
    exporter = find_exporter(fmt, what)
    with StepBar(f"export-{what} {fmt}", total=3) as bar:
        with bar.step(f"read {Path(checkpoint).name}"):
            bundle = load_clip(checkpoint)
        with bar.step(f"write {fmt}"):
            exporter(bundle, Path(checkpoint), Path(out))
        with bar.step("model card"):
            write_model_card(Path(out), what, fmt, Path(checkpoint).parent, to_dict(bundle.config),
                             Path(checkpoint))
