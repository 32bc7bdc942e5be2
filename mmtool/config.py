"""Typed configs: dataclasses filled from YAML, with `--set a.b=value` overrides.

Unknown keys and wrongly typed values fail with one line naming the key, so a typo
never silently falls back to a default; so do numbers out of their range.

Paths (fields typed `FilePath` and the like): a relative path in a user's YAML is taken from that YAML's folder. The
bundled recipes name the user's working folder instead (data/, runs/: where `mmtool data emoji` writes), so their
paths, like `--set` values and defaults, are taken from the current folder. A DeepSpeed config not found there is
looked up in the bundled configs (`zero2_bf16` or `configs/deepspeed/zero2_bf16.json`).
"""
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Annotated

import yaml

from mmtool import recipes
from mmtool.errors import MmtoolError


@dataclasses.dataclass(frozen=True)
class PathField:
    """Marks a config string naming a file or folder (see the module's docstring)."""
    only_if_exists: bool = False  # the value may also be a name (an alias, a hub id): a path only where it exists
    words: tuple[str, ...] = ()  # values that are keywords, not paths
    bundled: str | None = None  # a section of the bundled configs to look in when the file is not found


FilePath = Annotated[str, PathField()]
NameOrPath = Annotated[str, PathField(only_if_exists=True)]
DeepSpeedConfig = Annotated[str, PathField(only_if_exists=True, bundled="deepspeed")]
CacheFolder = Annotated[str, PathField(words=("auto",))]

# Lowest allowed value by key name, in whichever section the key sits: these names mean the same in every stage.
# 0 is in range where it has a meaning: lr 0 freezes, grad_clip 0 turns clipping off, max_steps 0 takes the
# schedule from epochs, save_every / eval_every 0 act at each epoch's end.
LOWEST = {"lr": 0, "grad_clip": 0, "max_steps": 0, "warmup_steps": 0, "save_every": 0, "eval_every": 0,
          "accum_steps": 1, "global_batch": 1, "batch_size": 1, "epochs": 1, "keep_states": 1, "log_every": 1,
          "max_nonfinite_steps": 1}


def load_config(cls, path: str | Path | None, overrides: list[str] = (), section: str | None = None):
    """Build dataclass `cls` from a YAML file (optional) and `key.sub=value` overrides.

    With a `section` (clip, align, finetune, pipeline), `path` may also name a bundled recipe (mmtool/recipes.py).
    """
    raw: dict = {}
    if path is not None:
        path = recipes.find_config(path, section) if section else Path(path)
        if not path.is_file():
            raise MmtoolError(f"config file not found: {path}")
        raw = read_yaml(path)
        if not recipes.is_bundled(path):
            _resolve_user_paths(cls, raw, path.resolve().parent)
    for item in overrides:
        _apply_override(raw, item)
    config = from_dict(cls, raw, where=str(path) if path else "config")
    _find_bundled_configs(config)
    return config


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context
        raise MmtoolError(f"{path}:{mark.line + 1}:{mark.column + 1}: invalid YAML ({problem})") from None
    except yaml.YAMLError as err:
        raise MmtoolError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise MmtoolError(f"{path}: top level must be a mapping")
    return raw


def _path_field(hint) -> PathField | None:
    """The PathField marking a type hint (inside Optional too), or None."""
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, PathField)), None)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(filter(None, map(_path_field, typing.get_args(hint))), None)
    return None


def _dataclass_of(hint):
    """The dataclass a type hint names (inside Optional too), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(filter(None, map(_dataclass_of, typing.get_args(hint))), None)
    return None


def _is_location(value: str) -> bool:
    """Already absolute, or a URL / webdataset pipe rather than a file path."""
    return Path(value).expanduser().is_absolute() or "://" in value or value.startswith(("pipe:", "file:"))


def _resolve_user_paths(cls, raw: dict, folder: Path) -> None:
    """Relative paths of a user's YAML, taken from its folder (in place, before the overrides are applied)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for key, value in raw.items():
        if key not in hints:
            continue  # from_dict names the unknown key
        nested, marker = _dataclass_of(hints[key]), _path_field(hints[key])
        if nested is not None and isinstance(value, dict):
            _resolve_user_paths(nested, value, folder)
        elif marker is not None and isinstance(value, str) and value not in marker.words and not _is_location(value):
            candidate = folder / Path(value).expanduser()
            if candidate.exists() or not marker.only_if_exists:
                raw[key] = str(candidate)


def _find_bundled_configs(config) -> None:
    """A DeepSpeed config (or other bundled-config field) not found as a file becomes the bundled one it names."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for field in dataclasses.fields(config):
        value, marker = getattr(config, field.name), _path_field(hints[field.name])
        if dataclasses.is_dataclass(value):
            _find_bundled_configs(value)
        elif marker is not None and marker.bundled and isinstance(value, str) and not Path(value).is_file():
            bundled = recipes.find_bundled(value, marker.bundled)
            if bundled is not None:
                setattr(config, field.name, str(bundled))


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
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MmtoolError(f"{where}: unknown key {unknown[0]!r} ({hint}known: {', '.join(sorted(names))})")
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
    if hint in (int, str, bool) and type(value) is not hint:
        raise MmtoolError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def to_dict(config) -> dict:
    """Plain-data form of a config (stored inside checkpoints)."""
    return dataclasses.asdict(config)


def to_yaml(config) -> str:
    """The resolved config as YAML that `--config` reads back (what `--print-config` shows)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True, width=120)
