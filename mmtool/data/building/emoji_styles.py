"""The drawing styles of the emoji corpus: where each style's artwork lies and which drawing shows which concept."""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmtool.data.building.emoji_catalog import Emoji
from mmtool.data.building.emoji_match import fluent_slugs, twemoji_stems
from mmtool.data.building.emoji_render import NOTO_FONT
from mmtool.data.building.npm_cache import npm_package
from mmtool.errors import MmtoolError

TWEMOJI = ("@twemoji/svg", "15.0.0")
FLUENT = ("fluentui-emoji", "1.3.0")
TWEMOJI_CREDIT = ("**Twemoji** graphics, Copyright Twitter, Inc and other contributors "
                  "(https://github.com/jdecked/twemoji), licensed under CC-BY 4.0 "
                  "(https://creativecommons.org/licenses/by/4.0/), from the npm package @twemoji/svg@15.0.0.")
FLUENT_CREDIT = ("**Fluent Emoji**, Copyright (c) Microsoft Corporation (https://github.com/microsoft/fluentui-emoji), "
                 "MIT License (text below), from the npm package fluentui-emoji@1.3.0.")
NOTO_CREDIT = ("**Noto Color Emoji** font, Copyright 2013-2017 Google Inc., SIL Open Font License 1.1 "
               "(Debian's fonts-noto-color-emoji; /usr/share/doc/fonts-noto-color-emoji/copyright).")


def twemoji_files(emoji: Emoji) -> list[str]:
    return twemoji_stems(emoji.codepoints)


def fluent_files(emoji: Emoji) -> list[str]:
    return fluent_slugs(emoji.name)


@dataclass(frozen=True)
class Style:
    name: str
    credit: str  # markdown for ATTRIBUTION.md
    package: tuple[str, str] | None = None  # npm (name, version) holding the SVGs; None: the Noto font
    folder: str = ""  # the SVGs' folder inside the package
    files: Callable[[Emoji], list[str]] | None = None  # candidate SVG file stems, first existing wins


STYLES = {style.name: style for style in (
    Style("noto", NOTO_CREDIT),
    Style("twemoji", TWEMOJI_CREDIT, TWEMOJI, "", twemoji_files),
    Style("fluent-flat", FLUENT_CREDIT, FLUENT, "icons/flat", fluent_files),
    Style("fluent-modern", FLUENT_CREDIT, FLUENT, "icons/modern", fluent_files),
    Style("fluent-high-contrast", FLUENT_CREDIT, FLUENT, "icons/high-contrast", fluent_files),
)}


def parse_styles(spec: str, eval_style: str | None) -> list[str]:
    """"noto,twemoji" or "all" as style names in the given order; checks the held-out style is among them."""
    names = list(STYLES) if spec.strip() == "all" else list(dict.fromkeys(s.strip() for s in spec.split(",")))
    for name in names:
        if name not in STYLES:
            raise MmtoolError(f"--styles: unknown style '{name}' (choose from {', '.join(STYLES)} or all)")
    if eval_style is not None and eval_style not in names:
        raise MmtoolError(f"--eval-style {eval_style} is not among --styles {','.join(names)}")
    if eval_style is not None and len(names) == 1:
        raise MmtoolError(f"--eval-style {eval_style} leaves no style to train on: add others to --styles")
    return names


@dataclass
class Artwork:
    """One style's drawings: {concept name: SVG path, or the emoji text the Noto font draws}."""
    source: str  # where the drawings come from, for meta.json
    drawings: dict[str, Path | str]
    unused_files: list[str]  # SVG files no concept claimed (emoji newer than the catalogue, non-standard ones)


def find_artwork(style: Style, catalogue: list[Emoji], npm_cache: Path) -> Artwork:
    """Matches every concept of the catalogue to this style's drawing of it (fetching the npm package once)."""
    if style.package is None:  # the font decides at drawing time: an empty glyph counts as unmatched then
        return Artwork(str(NOTO_FONT), {emoji.name: emoji.text for emoji in catalogue}, [])
    name, version = style.package
    svgs = {path.stem: path for path in (npm_package(name, version, npm_cache) / style.folder).glob("*.svg")}
    drawings = {}
    for emoji in catalogue:
        if stem := next((s for s in style.files(emoji) if s in svgs), None):
            drawings[emoji.name] = svgs[stem]
    unused = sorted(svgs.keys() - {path.stem for path in drawings.values()})
    return Artwork(f"{name}@{version}/{style.folder}".rstrip("/"), drawings, unused)
