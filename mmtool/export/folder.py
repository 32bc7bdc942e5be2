"""Export folders: written in a staging folder and renamed into place, with an `mmtool_export.json` manifest that
names the source weights (so an index can tell two models apart whatever format they travel in)."""
import hashlib
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from mmtool.errors import MmtoolError

MANIFEST = "mmtool_export.json"
FORMAT = "mmtool.export/1"


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of a model's weights: names, dtypes, shapes and float32 bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.float().numpy().tobytes() if tensor.is_floating_point() else tensor.numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def staged_folder(out: Path):
    """Yields an empty staging folder beside `out`, renamed to `out` when the block succeeds. An existing non-empty
    `out` is refused rather than replaced: nothing already written is lost."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MmtoolError(f"--out {out}: already exists and is not empty; choose another folder or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield stage
        if out.exists():
            out.rmdir()  # empty, checked above
        stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


def write_manifest(folder: Path, *, kind: str, fmt: str, source: Path, weights_sha256: str, image_size: int,
                   embed_dim: int, style_views: list[str], **extra) -> None:
    """style_views: the CLIP's eval.style_views, so an index built on the export reads images as eval-clip does."""
    manifest = {"format": FORMAT, "kind": kind, "export_format": fmt, "source": str(source),
                "weights_sha256": weights_sha256, "image_size": image_size, "embed_dim": embed_dim,
                "style_views": style_views, **extra}
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise MmtoolError(f"{folder}: not an mmtool export folder (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise MmtoolError(f"{path}: unknown export format {manifest.get('format')!r}")
    return manifest
