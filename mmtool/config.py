"""Typed configs: dataclasses filled from YAML, with `--set a.b=value` overrides.

Unknown keys and wrongly typed values fail with one line naming the key, so a typo
never silently falls back to a default; so do numbers out of their range.
"""
import dataclasses
import math
import types
import typing
from pathlib import Path

import yaml

from mmtool.errors import MmtoolError

# Lowest allowed value by key name, in whichever section the key sits: these names mean the same in every stage.
# 0 is in range where it has a meaning: lr 0 freezes, grad_clip 0 turns clipping off, max_steps 0 takes the
# schedule from epochs, save_every / eval_every 0 act at each epoch's end.
LOWEST = {"lr": 0, "grad_clip": 0, "max_steps": 0, "warmup_steps": 0, "save_every": 0, "eval_every": 0,
          "accum_steps": 1, "batch_size": 1, "epochs": 1, "keep_states": 1, "log_every": 1, "max_nonfinite_steps": 1}


def load_config(cls, path: str | Path | None, overrides: list[str] = ()):
    """Build dataclass `cls` from a YAML file (optional) and `key.sub=value` overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MmtoolError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise MmtoolError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise MmtoolError(f"{path}: top level must be a mapping")
    for item in overrides:
        _apply_override(raw, item)
    return from_dict(cls, raw, where=str(path) if path else "config")


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise MmtoolError(f"--set expects key=value, got {item!r}")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MmtoolError(f"--set {key}: {part} is not a section")
    node[leaf] = yaml.safe_load(value)


def from_dict(cls, raw, where: str):
    """Recursively convert a plain mapping into dataclass `cls`, checking keys and types."""
    if not isinstance(raw, dict):
        raise MmtoolError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise MmtoolError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    values = {key: _convert(hints[key], value, f"{where}.{key}") for key, value in raw.items()}
    for key, value in values.items():
        _check_range(key, value, f"{where}.{key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise MmtoolError(f"{where}: {err}") from None


def _check_range(key: str, value, where: str) -> None:
    if key in LOWEST and value is not None and not (math.isfinite(value) and value >= LOWEST[key]):
        raise MmtoolError(f"{where}: must be a finite number >= {LOWEST[key]}, got {value!r}")


def _convert(hint, value, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise MmtoolError(f"{where}: expected a list, got {value!r}")
        item_hint = args[0] if args else typing.Any
        items = [_convert(item_hint, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is typing.Any:
        return value
    if hint is float:
        # YAML 1.1 reads "5e-4" (no dot) as a string; accept it as the number it clearly is.
        try:
            if not isinstance(value, bool):
                return float(value)
        except (TypeError, ValueError):
            pass
        raise MmtoolError(f"{where}: expected a number, got {value!r}")
    if hint in (int, str, bool) and not (type(value) is hint):
        raise MmtoolError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def to_dict(config) -> dict:
    """Plain-data form of a config (stored inside checkpoints)."""
    return dataclasses.asdict(config)
