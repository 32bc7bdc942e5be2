"""`mmtool export-vision` / `export-clip`: a checkpoint into one export format."""
from importlib import import_module
from pathlib import Path

from mmtool.errors import MmtoolError
from stage1_clip.checkpoint import load_clip

# format -> (module, vision exporter, clip exporter); modules load on use (transformers is slow to import)
EXPORTERS = {
    "hf": ("mmtool.export.hf_folder", "export_vision_hf", "export_clip_hf"),
    "onnx": ("mmtool.export.onnx", "export_vision_onnx", "export_clip_onnx"),
    "safetensors": ("mmtool.export.safetensors_folder", "export_vision_safetensors", "export_clip_safetensors"),
}


def export(checkpoint: Path, what: str, fmt: str, out: Path) -> None:
    """what: vision (image tower + projection) | clip (both towers)."""
    if fmt not in EXPORTERS:
        raise MmtoolError(f"--format {fmt!r}: unknown (choose from {', '.join(EXPORTERS)})")
    module, vision_exporter, clip_exporter = EXPORTERS[fmt]
    exporter = getattr(import_module(module), vision_exporter if what == "vision" else clip_exporter)
    exporter(load_clip(checkpoint), Path(checkpoint), Path(out))
