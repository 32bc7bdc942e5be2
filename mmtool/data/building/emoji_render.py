"""Emoji drawings as PNG bytes: Noto glyphs drawn with Pillow, SVGs rasterised with cairosvg, many at once in a pool."""
import functools
import io
import multiprocessing
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw, ImageFont

from mmtool.data.reading.images import pad_to_square
from mmtool.errors import MmtoolError

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_PIXELS = 109  # the only size of the font's bitmap strikes
NOTO_CELL = (136, 128)  # canvas that holds every glyph at that size


def require_cairo() -> None:
    """cairosvg loads Debian's libcairo2 when imported; without it, say so instead of a loader traceback."""
    try:
        import cairosvg  # noqa: F401
    except OSError as err:
        raise MmtoolError(f"cairosvg cannot load libcairo2 ({err}): apt-get install -y libcairo2") from err


@functools.cache  # once per process
def noto_font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(NOTO_FONT), NOTO_PIXELS)


def draw(drawing: Path | str, image_size: int) -> Image.Image:
    """An SVG file, or the emoji text drawn with the Noto font, as an RGBA image_size square."""
    if isinstance(drawing, Path):
        import cairosvg  # here, so Noto-only builds work without libcairo2

        png = cairosvg.svg2png(url=str(drawing), output_width=image_size, output_height=image_size)
        return Image.open(io.BytesIO(png)).convert("RGBA")
    cell = Image.new("RGBA", NOTO_CELL, (0, 0, 0, 0))
    ImageDraw.Draw(cell).text((0, 0), drawing, font=noto_font(), embedded_color=True)
    # Keep the font's framing: "small" and "large" variants must stay different sizes.
    return pad_to_square(cell).resize((image_size, image_size), Image.LANCZOS)


def render(job: tuple[Path | str, int]) -> bytes | None:
    """PNG bytes of draw(*job), or None when nothing is drawn (a glyph the font lacks)."""
    image = draw(*job)
    if image.getchannel("A").getbbox() is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def render_all(drawings: list[Path | str], image_size: int, processes: int = 2) -> Iterator[bytes | None]:
    """render() of each drawing, in order; "spawn" because the caller may hold torch threads a fork would copy."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        yield from pool.imap(render, [(drawing, image_size) for drawing in drawings], chunksize=16)
