"""Augmentations against drawing-style shift: each a switch of StyleAugment, all off by default.

Every random choice comes from the per-sample numpy Generator the loader passes in (seeded by seed, epoch and
sample key), so a sample looks the same whatever its stream position, on a resumed run, and in both passes of a
gradient-caching step (which reuses the loader's tensors). A switch that is off draws nothing from the Generator.
"""
import string
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

WHITE = (255, 255, 255)
POSTERIZE_BITS = (2, 3, 4)  # bits kept per channel: 4, 8 or 16 levels
CONTOUR_WIDTHS = (1, 2)  # 1: the edge pixels alone (1 px); 2: grown by a 3x3 maximum filter (3 px)
CONTOUR_EDGE = 48  # luminance edge strength (0-255, after FIND_EDGES) that becomes a line


@dataclass(frozen=True)
class StyleAugment:
    """Probabilities (p_*) and strengths of the style augmentations; captions are rewritten only with templates."""
    background: float = 0.0  # p of a uniformly random background colour behind transparent pixels (else white)
    rotation: float = 0.0  # largest rotation in degrees, uniform in [-rotation, rotation]; corners get the background
    color_jitter: float = 0.0  # brightness, contrast and saturation factors uniform in [1 - s, 1 + s]
    hue: float = 0.0  # hue shift uniform in [-hue, hue] turns of the colour wheel (at most 0.5)
    grayscale: float = 0.0  # p of dropping colour
    posterize: float = 0.0  # p of keeping only 2-4 bits per channel (flat colour areas, as in flat emoji styles)
    outline: float = 0.0  # p of edge-only rendering: dark outlines on white, the drawing's colours gone
    # p of dark contour lines (1 or 3 px, grey 0-63) drawn over the coloured drawing: outlined flat art (OpenMoji)
    contour: float = 0.0
    stroke: float = 0.0  # p of every dark stroke made one pixel thicker or thinner (a grey-level min / max filter)
    # Extra phrasings filled from the sample's json fields, e.g. "a drawing of {name}", "{name}: {keywords}"; a
    # list field (keywords) is joined with ", ". The caption is drawn from the stored phrasings plus the templates
    # whose fields the sample has (non-empty).
    caption_templates: tuple[str, ...] = ()
    keyword_dropout: float = 0.0  # p of dropping each item of a list field before a template joins it

    def __post_init__(self):
        for name in ("background", "grayscale", "posterize", "outline", "contour", "stroke", "keyword_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.rotation <= 180.0:
            raise ValueError(f"rotation is in degrees, 0 to 180, got {self.rotation}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"color_jitter is in [0, 1), got {self.color_jitter}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue is in [0, 0.5] turns, got {self.hue}")
        for template in self.caption_templates:
            try:
                fields = template_fields(template)
            except ValueError as err:
                raise ValueError(f"caption template {template!r}: {err}") from None
            if not fields:
                raise ValueError(f"caption template {template!r} uses no sample field (e.g. {{name}})")
        if self.keyword_dropout and not self.caption_templates:
            raise ValueError("keyword_dropout acts on caption_templates' list fields; set caption_templates")


def template_fields(template: str) -> list[str]:
    """The {field} names a template uses; raises ValueError on positional or malformed ones."""
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    if any(not name.isidentifier() for name in fields):
        raise ValueError("placeholders must be sample field names like {name}")
    return fields


# --- images -------------------------------------------------------------------------------------------------


def composite(img: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """RGB image with transparent pixels showing `colour`."""
    if img.mode == "RGB":
        return img
    background = Image.new("RGBA", img.size, colour + (255,))
    return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")


def rotate(img: Image.Image, degrees: float) -> Image.Image:
    """Counter-clockwise rotation about the centre, same size; uncovered corners become transparent."""
    return img.convert("RGBA").rotate(degrees, resample=Image.BICUBIC, fillcolor=(0, 0, 0, 0))


def luminance_edges(img: Image.Image) -> Image.Image:
    """L image of edge strengths; edge-replicated padding, so the image border itself is no edge."""
    padded = Image.fromarray(np.pad(np.asarray(img.convert("L")), 1, mode="edge"))
    return padded.filter(ImageFilter.FIND_EDGES).crop((1, 1, img.width + 1, img.height + 1))


def outline(img: Image.Image) -> Image.Image:
    """Edge-only rendering: luminance edges as dark lines on white, stretched to full contrast."""
    return ImageOps.invert(ImageOps.autocontrast(luminance_edges(img))).convert("RGB")


def contour(img: Image.Image, width: int, shade: int) -> Image.Image:
    """The drawing with its luminance edges (silhouette and colour boundaries) painted as lines of grey `shade`,
    grown by a (2 width - 1) square maximum filter; the fills stay."""
    lines = luminance_edges(img).point(lambda v: 255 if v >= CONTOUR_EDGE else 0)
    if width > 1:
        lines = lines.filter(ImageFilter.MaxFilter(2 * width - 1))
    painted = np.asarray(img.convert("RGB")).copy()  # [H, W, 3]
    painted[np.asarray(lines) > 0] = shade
    return Image.fromarray(painted)


def stroke(img: Image.Image, thicker: bool) -> Image.Image:
    """Dark strokes one pixel thicker (3x3 minimum filter per channel) or thinner (maximum filter)."""
    return img.filter(ImageFilter.MinFilter(3) if thicker else ImageFilter.MaxFilter(3))


def jitter_colours(img: Image.Image, brightness: float, contrast: float, saturation: float,
                   hue_shift: float) -> Image.Image:
    """Brightness, contrast and saturation factors (1 = unchanged), then a hue shift in turns."""
    img = ImageEnhance.Brightness(img).enhance(brightness)
    img = ImageEnhance.Contrast(img).enhance(contrast)
    img = ImageEnhance.Color(img).enhance(saturation)
    if hue_shift:
        hsv = np.asarray(img.convert("HSV")).copy()  # [H, W, 3] uint8
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(hue_shift * 256))) % 256
        img = Image.fromarray(hsv, "HSV").convert("RGB")
    return img


def background_colour(aug: StyleAugment, rng: np.random.Generator) -> tuple[int, int, int]:
    if aug.background and rng.random() < aug.background:
        return tuple(int(v) for v in rng.integers(0, 256, 3))
    return WHITE


def before_crop(img: Image.Image, aug: StyleAugment, rng: np.random.Generator) -> Image.Image:
    """Rotation (on the transparent drawing) and the background: the decoded image as an RGB one."""
    if aug.rotation:
        img = rotate(img, rng.uniform(-aug.rotation, aug.rotation))
    return composite(img, background_colour(aug, rng))


def after_crop(img: Image.Image, aug: StyleAugment, rng: np.random.Generator) -> Image.Image:
    """Rendering-style changes on the resized crop: stroke width, then outline or (posterisation and contours),
    colour jitter, grayscale."""
    if aug.stroke and rng.random() < aug.stroke:
        img = stroke(img, thicker=bool(rng.random() < 0.5))
    if aug.outline and rng.random() < aug.outline:
        img = outline(img)
    else:
        if aug.posterize and rng.random() < aug.posterize:
            img = ImageOps.posterize(img, int(rng.choice(POSTERIZE_BITS)))
        if aug.contour and rng.random() < aug.contour:
            img = contour(img, int(rng.choice(CONTOUR_WIDTHS)), int(rng.integers(0, 64)))
    if aug.color_jitter or aug.hue:
        low, high = 1.0 - aug.color_jitter, 1.0 + aug.color_jitter
        factors = rng.uniform(low, high, 3)
        img = jitter_colours(img, *factors, rng.uniform(-aug.hue, aug.hue) if aug.hue else 0.0)
    if aug.grayscale and rng.random() < aug.grayscale:
        img = img.convert("L").convert("RGB")
    return img


# --- captions ------------------------------------------------------------------------------------------------


def pick_caption(captions: list[str], meta: dict, aug: StyleAugment, rng: np.random.Generator) -> str:
    """One of the stored phrasings, or (with caption_templates) of those plus the templates the sample can fill."""
    if not aug.caption_templates:
        return captions[int(rng.integers(len(captions)))]
    values = {}
    for key in sorted({name for template in aug.caption_templates for name in template_fields(template)}):
        value = meta.get(key)
        if isinstance(value, list):
            items = [str(v) for v in value if isinstance(v, (str, int)) and str(v).strip()]
            if aug.keyword_dropout:
                items = [v for v, drop in zip(items, rng.random(len(items)) < aug.keyword_dropout) if not drop]
            value = ", ".join(items)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            values[key] = str(value)
    filled = [template.format_map(values) for template in aug.caption_templates
              if all(name in values for name in template_fields(template))]
    choices = captions + filled
    return choices[int(rng.integers(len(choices)))]
