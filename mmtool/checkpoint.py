"""Self-contained model checkpoints: config + tokenizer + float32 weights, written atomically.

`NAME.pt` loads with `torch.load(weights_only=True)` and `NAME.safetensors` with safetensors, so
loading never runs pickled code. Both carry the same content; the safetensors copy keeps the
non-tensor parts as JSON / base64 in its metadata. Both record one content hash (weights' exact bytes,
config, extras): loading either recomputes it, and compares it with its twin's when the twin is there,
so a changed file, or a .pt and .safetensors from two different saves, is refused.
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
    state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    digest = content_sha256(config, state_dict, extras)
    payload = {"format": FORMAT, "kind": kind, "config": config, "extras": extras, "state_dict": state_dict,
               "content_sha256": digest}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    metadata = {"format": FORMAT, "kind": kind, "config": json.dumps(config),
                "extras": json.dumps({k: _encode_extra(v) for k, v in extras.items()}), "content_sha256": digest}
    atomic_write(path.with_suffix(".safetensors"), lambda tmp: save_file(state_dict, str(tmp), metadata=metadata))


def content_sha256(config: dict, state_dict: dict[str, torch.Tensor], extras: dict[str, bytes | str]) -> str:
    """Hash of everything a checkpoint carries: config, extras, and each tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(extras):
        value = extras[name]
        digest.update(f"{name}:{type(value).__name__};".encode() + (value if isinstance(value, bytes) else
                                                                  value.encode()))
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's exact values as bytes, any dtype and shape (0-dim and empty included), in row-major order."""
    tensor = tensor.detach().cpu().contiguous()
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


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
                   "state_dict": load_file(str(path)), "content_sha256": meta.get("content_sha256")}
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise MmtoolError(f"{path}: not a readable mmtool checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MmtoolError(f"{path}: not an mmtool checkpoint (format {payload.get('format')!r})")
    if payload.get("kind") != kind:
        raise MmtoolError(f"{path}: is a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    _check_content(path, payload)
    return payload


def _check_content(path: Path, payload: dict) -> None:
    """Checkpoints saved before the hash carry none: they load unchecked."""
    recorded = payload.get("content_sha256")
    if recorded is None:
        return
    if content_sha256(payload["config"], payload["state_dict"], payload["extras"]) != recorded:
        raise MmtoolError(f"{path}: its content does not match the hash recorded when it was saved (changed or "
                          "damaged since); load its twin or save it again")
    twin = path.with_suffix(".pt" if path.suffix == ".safetensors" else ".safetensors")
    twin_hash = _recorded_hash(twin) if twin.is_file() else recorded
    if twin_hash != recorded:
        pt, safetensors = sorted((path.name, twin.name), key=lambda name: not name.endswith(".pt"))
        raise MmtoolError(f"{path.parent}: {pt} and {safetensors} hold different content (a save interrupted between "
                          "the two, or one replaced); delete the stale one or save again")


def _recorded_hash(path: Path) -> str | None:
    """The twin's recorded hash, without reading its tensors (metadata; a memory-mapped .pt)."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return (handle.metadata() or {}).get("content_sha256")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("content_sha256")
    except Exception as err:  # noqa: BLE001 -- any unreadable twin is a mismatch, named in one line
        raise MmtoolError(f"{path}: twin of the checkpoint being loaded is unreadable ({type(err).__name__}); "
                          "delete it or save again") from None


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
