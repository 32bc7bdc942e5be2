"""The bundled configs ("recipes"): where they are, and which file a `--config` value names.

A checkout (and an editable install) reads the top-level configs/ folder; a wheel ships the same folder inside the
package as mmtool/configs/ (setup.py). A value names, in this order: a file (absolute, or relative to the current
folder), a recipe of the section by name (`tiny_vit` -> configs/clip/tiny_vit.yaml), or a path
spelled from the checkout's root (`configs/clip/tiny_vit.yaml`) that the bundled configs hold.
"""
import difflib
from pathlib import Path

from mmtool.errors import MmtoolError

SUFFIXES = {"deepspeed": ".json"}  # every other section holds YAML


def bundled_root() -> Path:
    shipped = Path(__file__).resolve().parent / "configs"
    return shipped if shipped.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def recipe_names(section: str) -> list[str]:
    return sorted(path.stem for path in (bundled_root() / section).glob(f"*{SUFFIXES.get(section, '.yaml')}"))


def is_bundled(path: Path) -> bool:
    return path.resolve().is_relative_to(bundled_root())


def find_bundled(value: str | Path, section: str) -> Path | None:
    """The bundled file `value` names by recipe name or by its checkout path, or None."""
    text, root = str(value), bundled_root()
    suffix = SUFFIXES.get(section, ".yaml")
    if "/" not in text:
        candidate = root / section / (text if text.endswith(suffix) else text + suffix)
    elif text.startswith("configs/"):
        candidate = root / text.removeprefix("configs/")
    else:
        return None
    return candidate if candidate.is_file() else None


def find_config(value: str | Path, section: str) -> Path:
    """The config file `value` names; fails with one line listing the section's recipes and the closest one."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    bundled = None if path.is_absolute() else find_bundled(value, section)
    if bundled is not None:
        return bundled
    names = recipe_names(section)
    close = difflib.get_close_matches(path.stem, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise MmtoolError(f"config file not found: {path} (bundled {section} recipes: {', '.join(names) or 'none'}"
                      f"{hint})")
