"""ATTRIBUTION.md beside the shards: Twemoji's CC-BY 4.0 requires credit and a note of changes, MIT its notice."""
from pathlib import Path

from mmtool.data.building.emoji_styles import FLUENT, Style
from mmtool.data.building.npm_cache import npm_package

ATTRIBUTION_FILE = "ATTRIBUTION.md"
MIT_MICROSOFT = """MIT License

Copyright (c) Microsoft Corporation.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def write_attribution(out: Path, styles: list[Style], image_size: int, npm_cache: Path) -> str:
    """Credits each artist once, states the changes, and copies each npm package's own licence file."""
    lines = ["# Attribution", "", f"The images in these shards are drawings by the artists below, rasterised by "
             f"mmtool to {image_size}x{image_size} PNG (transparent background); nothing else was changed.", ""]
    lines += [f"- {credit} Styles: {', '.join(s.name for s in styles if s.credit == credit)}."
              for credit in dict.fromkeys(style.credit for style in styles)]
    if any(style.package == FLUENT for style in styles):
        lines += ["", "## Fluent Emoji licence", "", "```", MIT_MICROSOFT.strip(), "```"]
    for name, version in dict.fromkeys(style.package for style in styles if style.package):
        folder = npm_package(name, version, npm_cache)
        for licence in sorted(p for p in folder.iterdir() if p.name.lower().startswith(("license", "licence"))):
            lines += ["", f"## Packaging of {name}@{version} ({licence.name})", "", "```",
                      licence.read_text(encoding="utf-8").strip(), "```"]
    (out / ATTRIBUTION_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ATTRIBUTION_FILE
