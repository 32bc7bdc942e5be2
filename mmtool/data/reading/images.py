"""Image decoding and CLIP preprocessing with Pillow + numpy (torchvision does not install beside our torch)."""
import functools
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from mmtool.data.reading.augment import WHITE, StyleAugment, after_crop, before_crop, composite

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
MAX_PIXELS = 8192 * 8192  # larger images are treated as decompression bombs
SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's modes for 16-bit greyscale PNG / TIFF


class BadSample(Exception):
    """A sample that cannot be used; `reason` is a short slug the loaders count skips by."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation: random resized crop, and the style switches (mmtool/data/reading/augment.py)."""
    random_resized_crop_scale: tuple = (0.9, 1.0)  # share of the image area kept
    ratio: tuple = (3 / 4, 4 / 3)  # crop aspect ratio range (width / height)
    style: StyleAugment = StyleAugment()


def open_image(data: bytes) -> Image.Image:
    """Decodes fully, upright, as RGB or (when it has any transparency) RGBA; raises BadSample."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise BadSample("bomb", f"{width}x{height} pixels")
            if width == 0 or height == 0:
                raise BadSample("empty_image", f"{width}x{height}")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in SIXTEEN_BIT_GREY:  # convert("RGB") would clip every value above 255 to white
                img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
            has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
            return img.convert("RGBA" if has_alpha else "RGB")
    except BadSample:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadSample("bomb", str(err)) from err
    except MemoryError as err:  # a legal size whose decoding still does not fit: this sample, not the run, fails
        raise BadSample("out_of_memory", "decoding needs more memory than is free") from err
    except Exception as err:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...) on bad bytes
        raise BadSample("unreadable_image", f"{type(err).__name__}: {err}") from err


def flatten_on_white(img: Image.Image) -> Image.Image:
    """RGBA -> RGB composited on white (transparent icons would otherwise turn black)."""
    return composite(img, WHITE)


def load_image(data: bytes) -> Image.Image:
    """Decoded RGB image, transparency composited on white; raises BadSample."""
    return flatten_on_white(open_image(data))


def pad_to_square(img: Image.Image) -> Image.Image:
    """Centres an RGBA image on a transparent square canvas, keeping the drawing's own framing."""
    side = max(img.size)
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def to_pixels(img: Image.Image) -> torch.Tensor:
    """RGB image -> its bytes as a uint8 tensor [3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


def normalize_pixels(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels [..., 3, H, W] -> CLIP-normalised `dtype`, computed in float32 wherever the pixels are.

    Training batches travel as uint8 and are normalised here on the training device: a quarter of float32's
    bytes to stack, pin and copy, and the loader workers skip the per-pixel arithmetic (bench/RESULTS_gpu.md)."""
    scale, shift = clip_affine(pixels.device)
    return torch.addcmul(shift, pixels.float(), scale).to(dtype)  # one fused pass: every step normalises a batch


def to_crop(pixels: torch.Tensor) -> Image.Image:
    """CLIP-normalised [3, S, S] -> the 8-bit RGB image it was made from (normalize_pixels undone, rounded)."""
    mean = torch.from_numpy(CLIP_MEAN).double().view(3, 1, 1)
    std = torch.from_numpy(CLIP_STD).double().view(3, 1, 1)
    values = ((pixels.detach().cpu().double() * std + mean) * 255).round().clamp(0, 255)  # [3, S, S]
    return Image.fromarray(values.to(torch.uint8).permute(1, 2, 0).numpy(), "RGB")


@functools.lru_cache(maxsize=None)
def clip_affine(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel / 255 - mean) / std as pixel * scale + shift: scale and shift [3, 1, 1] float32 (from float64) on
    `device`, copied there once rather than every step."""
    mean, std = torch.from_numpy(CLIP_MEAN).double(), torch.from_numpy(CLIP_STD).double()
    return ((1 / (255 * std)).float().view(3, 1, 1).to(device), (-mean / std).float().view(3, 1, 1).to(device))


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    return normalize_pixels(to_pixels(img))  # [3, H, W]


def eval_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bicubic), then the centre size x size crop.

    Only the crop is resampled (Pillow's resize `box`), with the coordinates the full resize would map it from:
    the same pixels, but work and memory stay O(size²) however tall or wide the image (a 1x65536 image would
    otherwise be scaled up to 224x14.7M pixels first)."""
    width, height = img.size
    scale = size / min(width, height)
    # Rounding as torchvision's Resize does: the long side is truncated.
    new_size = (size, int(height * scale)) if width <= height else (int(width * scale), size)
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    if new_size == img.size:
        return img.crop((left, top, left + size, top + size))
    x_scale, y_scale = width / new_size[0], height / new_size[1]  # input pixels per resized pixel
    box = (left * x_scale, top * y_scale, (left + size) * x_scale, (top + size) * y_scale)
    return img.resize((size, size), Image.BICUBIC, box=box)


def eval_transform(img: Image.Image, size: int, style: StyleAugment | None = None,
                   rng: np.random.Generator | None = None) -> torch.Tensor:
    """eval_crop, CLIP normalisation -> [3, size, size] float32; with `style`, its rendering changes
    (augment.after_crop, drawn from `rng`) on the crop first: a styled view of the same crop."""
    crop = eval_crop(img, size)
    return to_normalized_tensor(crop if style is None else after_crop(crop, style, rng))


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple, ratio: tuple) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling: (left, top, right, bottom)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fallback: the largest centred crop whose aspect ratio lies within `ratio`.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_pixels(img: Image.Image, size: int, rng: np.random.Generator,
                 augment: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """RGB or RGBA image (transparency shows white unless the background switch is on) -> style augmentations
    around a random resized crop to size x size (bicubic) -> [3, size, size] uint8 (normalize_pixels next)."""
    img = before_crop(img, augment.style, rng)
    box = random_resized_crop_box(img.width, img.height, rng, augment.random_resized_crop_scale, augment.ratio)
    return to_pixels(after_crop(img.resize((size, size), Image.BICUBIC, box=box), augment.style, rng))


def train_transform(img: Image.Image, size: int, rng: np.random.Generator,
                    augment: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """train_pixels, CLIP-normalised -> [3, size, size] float32."""
    return normalize_pixels(train_pixels(img, size, rng, augment))
