"""The frozen image tower's patch features, computed once per image and read back on every later use.

Key: sha256 of the preprocessed image tensor, the exact input of the tower, so the decoder, resize, crop and
normalisation are part of the key and a random augmentation can never be served a stale view. Namespace: the
tower's weights (sha256 of its state dict as trained, not of a file that may hold other weights), type, feature
layer, image size and the engine's precision setting (bf16 autocast gives other features than float32). A changed
tower, layer, resolution or precision reads and writes another folder, so it never sees the old entries.

Where: beside the training data (`<data folder>/feature_cache/<namespace>/`), so every run on the same tower and
images shares it (a sweep of stage-2/3 recipes on one CLIP computes each image's features once), not only the
epochs of one run. One file per image, written to a temporary name and renamed, so a crash or two ranks writing the
same image never leave a torn file.

Ranks agree on hit or miss per batch (a miss anywhere runs the tower everywhere): under ZeRO-3 the tower's weights
are gathered collectively, so every rank must run it, or none.
"""
import hashlib
import io
import json
import os
import re
from pathlib import Path

import torch

from mmtool import distributed
from mmtool.checkpoint import atomic_write
from mmtool.engine import load_deepspeed_config
from mmtool.optim import ParamGroupRule
from mmtool.train_config import TrainSettings

FOLDER = "feature_cache"


def open_feature_cache(model, record: dict, setting: str | None, data_folder: Path,
                       train: TrainSettings) -> "FeatureCache | None":
    """The cache for `model`'s tower, or None when `setting` is null or the tower learns (its features change
    every step). `setting`: "auto" (data_folder/feature_cache) or a folder."""
    if not setting or not frozen_by_rules(model.vision, "vision.", train.lr, train.param_groups):
        return None
    vision = record["vision"]
    namespace = {"tower_sha256": weights_sha256(model.vision), "type": vision["type"],
                 "feature_layer": vision["feature_layer"], "image_size": vision["image_size"],
                 "precision": precision_of(load_deepspeed_config(train.deepspeed))}
    return FeatureCache(Path(data_folder) / FOLDER if setting == "auto" else Path(setting), namespace)


class FeatureCache:
    def __init__(self, root: Path, namespace: dict):
        self.namespace = namespace
        digest = hashlib.sha256(json.dumps(namespace, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root) / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        description = self.folder / "namespace.json"
        if not description.is_file():
            atomic_write(description, lambda tmp: tmp.write_text(json.dumps(namespace, indent=1, sort_keys=True)))
        self.entries, self.bytes = folder_size(self.folder)
        self.hits = self.misses = 0  # images looked up by this process

    def features(self, images: torch.Tensor, tower) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N, C]: read back when every image of the batch (on every rank) is cached, else
        `tower(images)`, whose rows are then stored."""
        keys = [image_key(image) for image in images]
        cached = [self._read(key) for key in keys]
        if all_ranks(all(entry is not None for entry in cached), images.device):
            self.hits += len(keys)
            return torch.stack(cached).to(images.device)  # [B, N, C]
        features = tower(images)  # [B, N, C]
        missing = {key: row for key, entry, row in zip(keys, cached, features.detach()) if entry is None}
        for key, row in missing.items():  # an image twice in a batch (one per question about it) is written once
            self._write(key, row)
        self.misses += sum(entry is None for entry in cached)
        return features

    def stats(self) -> dict:
        """For the train log: the cache's size and this process's hit rate so far."""
        looked_up = self.hits + self.misses
        return {"feature_cache_mb": self.bytes / 2**20, "feature_cache_entries": self.entries,
                "feature_cache_hit_rate": self.hits / looked_up if looked_up else 0.0}

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def _read(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return torch.load(path, weights_only=True)  # [N, C]

    def _write(self, key: str, row: torch.Tensor) -> None:
        buffer = io.BytesIO()
        torch.save(row.cpu().clone(), buffer)  # clone: save this row, not the whole batch's storage
        atomic_write(self._path(key), lambda tmp: tmp.write_bytes(buffer.getvalue()))
        self.entries += 1
        self.bytes += buffer.tell()


def image_key(image: torch.Tensor) -> str:
    """sha256 of a preprocessed image [3, H, W]: its shape, dtype and values."""
    image = image.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(image.shape)}{image.dtype}".encode())
    digest.update(image.view(torch.uint8).numpy().tobytes() if image.numel() else b"")
    return digest.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes, values): the weights it computes with."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def precision_of(deepspeed_config: dict) -> dict:
    """The parts of a DeepSpeed config that change what the tower computes."""
    return {key: deepspeed_config.get(key) for key in ("torch_autocast", "bf16", "fp16")}


def frozen_by_rules(module: torch.nn.Module, prefix: str, lr: float, rules: list[ParamGroupRule]) -> bool:
    """True when every parameter of `module` (named `prefix` + name in the model) gets lr 0 from the param
    groups (first matching rule wins, as mmtool.optim.build_param_groups) or is already frozen."""
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    for name, param in module.named_parameters():
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
            if name.endswith(".pt"):
                entries += 1
                total += os.path.getsize(os.path.join(root, name))
    return entries, total
