"""Self-contained model checkpoints: config + tokenizer + float32 weights, written atomically.

`NAME.pt` loads with `torch.load(weights_only=True)` and `NAME.safetensors` with safetensors, so
loading never runs pickled code. Both carry the same content; the safetensors copy keeps the
non-tensor parts as JSON / base64 in its metadata.
"""
import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from mmtool.errors import MmtoolError

FORMAT = "mmtool.checkpoint/1"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then rename over `path`: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(path: Path, kind: str, config: dict, state_dict: dict[str, torch.Tensor],
               extras: dict[str, bytes | str] | None = None) -> None:
    """Writes `path` (.pt) and its .safetensors twin. `extras` holds tokenizer files and the like."""
    path = Path(path)
    extras = extras or {}
    payload = {"format": FORMAT, "kind": kind, "config": config, "extras": extras,
               "state_dict": {k: v.contiguous() for k, v in state_dict.items()}}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    metadata = {"format": FORMAT, "kind": kind, "config": json.dumps(config),
                "extras": json.dumps({k: _encode_extra(v) for k, v in extras.items()})}
    atomic_write(path.with_suffix(".safetensors"),
                 lambda tmp: save_file(payload["state_dict"], str(tmp), metadata=metadata))


def load_model(path: str | Path, kind: str) -> dict:
    """Returns {"config", "extras", "state_dict"} from a .pt or .safetensors checkpoint of `kind`."""
    path = Path(path)
    if not path.is_file():
        raise MmtoolError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        payload = {"format": meta.get("format"), "kind": meta.get("kind"),
                   "config": json.loads(meta.get("config", "{}")),
                   "extras": {k: _decode_extra(v) for k, v in json.loads(meta.get("extras", "{}")).items()},
                   "state_dict": load_file(str(path))}
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise MmtoolError(f"{path}: not a readable mmtool checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MmtoolError(f"{path}: not an mmtool checkpoint (format {payload.get('format')!r})")
    if payload.get("kind") != kind:
        raise MmtoolError(f"{path}: is a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    return payload


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _encode_extra(value: bytes | str) -> dict:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return {"str": value}


def _decode_extra(value: dict) -> bytes | str:
    return base64.b64decode(value["b64"]) if "b64" in value else value["str"]
