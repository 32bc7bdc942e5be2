"""Style views: an image embedded as the mean of its embeddings under fixed renderings (test-time augmentation).

The default CLIP learns with grayscale, outline-only, contour and stroke-width renderings of its training drawings
(data.augment). A drawing by an artist it never saw is read more reliably through the same renderings: the
mean of the unit embeddings of the plain crop and its renderings, re-normalised, is the image's embedding
(`eval.style_views`; stage1_clip/evaluate.py's embed_views; measured in docs/clip_style_views.md), wherever an
image meets the CLIP: eval-clip, `mmtool index` (mmtool/index/embed.py), stage 3's tower baseline and tower tags.
Each rendering is fixed: contour's line width and shade and stroke's direction are drawn once from VIEW_SEED, the
same for every image, so an image always gets the same embedding.
"""
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmtool.data.reading.augment import StyleAugment, after_crop
from mmtool.data.reading.images import to_normalized_tensor

VIEWS = {
    "plain": None,
    "grayscale": StyleAugment(grayscale=1.0),
    "outline": StyleAugment(outline=1.0),
    "contour": StyleAugment(contour=1.0),
    "stroke": StyleAugment(stroke=1.0),
}
VIEW_SEED = 0


def check_views(views: list[str]) -> None:
    """Raises ValueError naming an unknown or repeated view."""
    for view in views:
        if view not in VIEWS:
            raise ValueError(f"unknown style view {view!r}; the views are {', '.join(VIEWS)}")
    if len(set(views)) != len(views):
        raise ValueError(f"style views repeat: {views}")


def effective_views(views: list[str]) -> list[str]:
    """The views to average over: [] when the plain crop alone is asked for ([] or [plain]), which is read
    without the view machinery (embed_images, the embedding token)."""
    return [] if list(views) == ["plain"] else list(views)


def view_pixels(crop: Image.Image, view: str) -> torch.Tensor:
    """The crop rendered as `view`, CLIP-normalised -> [3, S, S]."""
    style = VIEWS[view]
    rendered = crop if style is None else after_crop(crop, style, np.random.default_rng(VIEW_SEED))
    return to_normalized_tensor(rendered)


def view_stack(crop: Image.Image, views: list[str]) -> torch.Tensor:
    """The crop in each view (no views: the plain crop alone) -> [V, 3, S, S]."""
    return torch.stack([view_pixels(crop, view) for view in views or ["plain"]])


def mean_view_embedding(encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """[B, V, 3, S, S] views -> [B, D]: the normalised sum of `encode`'s unit embeddings ([B, 3, S, S] -> [B, D]),
    one view at a time so a batch costs the memory of B images."""
    total = sum(encode(pixels[:, view]).float() for view in range(pixels.shape[1]))  # [B, D]
    return F.normalize(total, dim=-1)
