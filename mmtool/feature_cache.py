"""A frozen tower's outputs on disk, computed once per exact input and read back on every later use.

Shared by every stage that runs a frozen tower (stage 1's locked text tower and frozen image trunk, stages 2-3's
image tower). The stage names what it caches in a namespace (the tower's weights hash, its layer or cut point,
input size, precision...); the namespace's digest is the folder, so a changed tower never sees old entries.

Key: sha256 of the tower's exact input tensor (shape, dtype, values): for images the decoded, resized, augmented
and normalised pixels, for text the token ids and mask. A different view of an image is a different key, so an
augmentation can never be served a stale view. One file per input, written to a temporary name and renamed, so a
crash or two ranks writing the same entry never leave a torn file. An entry is a 64-byte text header (dtype and
shape) and the tensor's raw bytes: a training step reads hundreds of entries, and torch.load's zip container cost
10-14x more per entry than the read itself (bench/RESULTS.md, "CPU: feature cache entries"). A file whose size does not
match its header is a miss: recomputed and rewritten, never served.

A batch runs the tower on its missing rows only. Ranks agree per batch whether anyone has a miss (then every rank
runs the tower, on one row at least): under ZeRO-3 a tower's weights are gathered collectively, so every rank must
run it, or none.
"""
import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch

from mmtool import distributed
from mmtool.checkpoint import atomic_write, tensor_bytes
from mmtool.optim import ParamGroupRule

FOLDER = "feature_cache"
SUFFIX = ".bin"
HEADER_BYTES = 64


class FeatureCache:
    """`label` prefixes the train-log fields (two caches in one run log apart)."""

    def __init__(self, root: Path, namespace: dict, label: str = "feature_cache"):
        self.namespace, self.label = namespace, label
        digest = hashlib.sha256(json.dumps(namespace, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root) / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        description = self.folder / "namespace.json"
        if not description.is_file():
            atomic_write(description, lambda tmp: tmp.write_text(json.dumps(namespace, indent=1, sort_keys=True)))
        self.entries, self.bytes = folder_size(self.folder)
        self.hits = self.misses = 0  # inputs looked up by this process

    def features(self, inputs: torch.Tensor, tower, keys: list[str] | None = None, fill=None) -> torch.Tensor:
        """[B, ...] -> [B, ...]: the cached rows read back, `tower` run on the missing rows only, which are then
        stored. A batch half seen before (a new caption phrasing, another view of an image) costs half.
        `keys`: the rows' keys when the caller names its inputs (stage 1's views), else hashes of the rows;
        `fill(inputs, missing)`: `inputs` with the missing rows' real values, when the caller left some out."""
        keys = keys or [image_key(row) for row in inputs]
        rows = [self._read(key) for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if not all_ranks(not missing, inputs.device):
            if fill is not None and missing:
                inputs = fill(inputs, missing)
            # A rank with nothing missing still runs the tower (on one row, discarded) to join the others' gathers.
            computed = tower(inputs[missing] if missing else inputs[:1]).detach()  # [M, ...]
            written = set()
            for i, row in zip(missing, computed):
                if keys[i] not in written:  # an input twice in a batch is computed twice, written once
                    self._write(keys[i], row)
                    written.add(keys[i])
                rows[i] = row
            return torch.stack([row.to(computed.dtype) for row in rows]).to(inputs.device)  # [B, ...]
        return torch.stack(rows).to(inputs.device)  # [B, ...]

    def stats(self) -> dict:
        """For the train log: the cache's size and this process's hit rate so far."""
        looked_up = self.hits + self.misses
        return {f"{self.label}_mb": self.bytes / 2**20, f"{self.label}_entries": self.entries,
                f"{self.label}_hit_rate": self.hits / looked_up if looked_up else 0.0}

    def _path(self, key: str) -> Path:
        return entry_path(self.folder, key)

    def _read(self, key: str) -> torch.Tensor | None:
        try:
            return decode_entry(self._path(key).read_bytes())
        except FileNotFoundError:
            return None

    def _write(self, key: str, row: torch.Tensor) -> None:
        data = encode_entry(row)
        atomic_write(self._path(key), lambda tmp: tmp.write_bytes(data))
        self.entries += 1
        self.bytes += len(data)


def entry_path(folder: Path, key: str) -> Path:
    """Where the entry of `key` lives in a cache folder (the namespace's)."""
    return Path(folder) / key[:2] / f"{key}{SUFFIX}"


def encode_entry(row: torch.Tensor) -> bytes:
    """A tensor as the header "<dtype> <d0,d1,...>" ("-" for no dimension; space-padded to HEADER_BYTES) and its
    raw bytes."""
    header = f"{str(row.dtype).removeprefix('torch.')} {','.join(map(str, row.shape)) or '-'}".encode()
    if len(header) >= HEADER_BYTES:
        raise ValueError(f"feature cache entry of shape {tuple(row.shape)}: header over {HEADER_BYTES} bytes")
    return header.ljust(HEADER_BYTES) + tensor_bytes(row)


def decode_entry(data: bytes) -> torch.Tensor | None:
    """encode_entry's tensor back, or None when the data is not a whole entry (a miss: recomputed)."""
    try:
        dtype_name, dims = data[:HEADER_BYTES].decode().split()
        dtype = getattr(torch, dtype_name)
        shape = [] if dims == "-" else [int(d) for d in dims.split(",")]
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    if not isinstance(dtype, torch.dtype) or len(data) - HEADER_BYTES != dtype.itemsize * math.prod(shape):
        return None
    body = bytearray(data[HEADER_BYTES:])  # writable, so the tensor owns its memory
    return torch.frombuffer(body, dtype=dtype).reshape(shape) if body else torch.empty(shape, dtype=dtype)


def image_key(tensor: torch.Tensor) -> str:
    """sha256 of one input row (a preprocessed image [3, H, W], token ids...): its shape, dtype and values."""
    digest = hashlib.sha256(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
    digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes, values): the weights it computes with."""
    return state_sha256(module.state_dict())


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over named tensors (names, shapes, dtypes, values), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor_bytes(tensor))  # a 0-dim one too (BatchNorm's num_batches_tracked)
    return digest.hexdigest()


def precision_of(deepspeed_config: dict) -> dict:
    """The parts of a DeepSpeed config that change what a tower computes."""
    return {key: deepspeed_config.get(key) for key in ("torch_autocast", "bf16", "fp16")}


def frozen_by_rules(module: torch.nn.Module, prefix: str, lr: float, rules: list[ParamGroupRule]) -> bool:
    """True when every parameter of `module` (named `prefix` + name in the model) gets lr 0 from the param
    groups (first matching rule wins, as mmtool.optim.build_param_groups) or is already frozen."""
    return all_frozen(module.named_parameters(), prefix, lr, rules)


def all_frozen(named_parameters, prefix: str, lr: float, rules: list[ParamGroupRule]) -> bool:
    """frozen_by_rules over (name, parameter) pairs."""
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    for name, param in named_parameters:
        group_lr = lr
        for regex, rule in compiled:
            if regex.search(prefix + name):
                group_lr = rule.lr if rule.lr is not None else lr
                break
        if group_lr != 0 and param.requires_grad:
            return False
    return True


def all_ranks(flag: bool, device: torch.device) -> bool:
    """`flag` and-ed over the ranks (itself on one process)."""
    if distributed.world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


def folder_size(folder: Path) -> tuple[int, int]:
    """(entries, bytes) of the cache files under `folder`."""
    entries = total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(SUFFIX):
                entries += 1
                total += os.path.getsize(os.path.join(root, name))
    return entries, total
