"""`mmtool export-vision` / `export-clip`: a checkpoint into one export format."""
from pathlib import Path

from mmtool.errors import MmtoolError
from stage1_clip.bundle import load_clip


def _exporters(what: str) -> dict:
    from mmtool.export import hf_folder, onnx, safetensors_folder

    if what == "vision":
        return {"hf": hf_folder.export_vision_hf, "onnx": onnx.export_vision_onnx,
                "safetensors": safetensors_folder.export_vision_safetensors}
    return {"hf": hf_folder.export_clip_hf, "onnx": onnx.export_clip_onnx,
            "safetensors": safetensors_folder.export_clip_safetensors}


def export(checkpoint: Path, what: str, fmt: str, out: Path) -> None:
    """what: vision (image tower + projection) | clip (both towers)."""
    exporters = _exporters(what)
    if fmt not in exporters:
        raise MmtoolError(f"--format {fmt!r}: unknown (choose from {', '.join(exporters)})")
    exporters[fmt](load_clip(checkpoint), Path(checkpoint), Path(out))
