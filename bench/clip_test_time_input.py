"""A CLIP checkpoint's retrieval and zero-shot figures with its eval images at other sizes than it trained at, or
each image embedded as the mean of several test-time views: its mirror image (flip), or the training style
augmentations applied deterministically (gray, outline, contour = 1 px black lines, thick / thin strokes). Does a
larger, flipped or style-averaged test input help on a style the CLIP never saw?

    .venv/bin/python bench/clip_test_time_input.py runs/folds/s1200/twemoji/clip.pt \
        "data/folds/twemoji/heldout_val-*.tar" 96,112,128 --views plain,flip,plain+gray,plain+contour

One JSON line per (size, views), figures in %.
"""
import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmtool.data.reading.augment import contour, outline, stroke
from mmtool.data.reading.images import CLIP_MEAN, CLIP_STD, normalize_pixels, to_pixels
from mmtool.data.reading.loader import make_eval_set, resolve_shards
from stage1_clip.checkpoint import load_clip
from stage1_clip.evaluate import evaluate_clip

FIGURES = ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "zero_shot_group_acc",
           "zero_shot_group_from_names_acc")


STYLES = {
    "gray": lambda img: img.convert("L").convert("RGB"),
    "outline": outline,
    "contour": lambda img: contour(img, width=1, shade=0),
    "thick": lambda img: stroke(img, thicker=True),
    "thin": lambda img: stroke(img, thicker=False),
}


def styled(images: torch.Tensor, style: str) -> torch.Tensor:
    """Normalised eval images [B, 3, H, W] -> the same drawn in `style` (through 8-bit RGB, as in training)."""
    mean, std = torch.from_numpy(CLIP_MEAN).view(3, 1, 1), torch.from_numpy(CLIP_STD).view(3, 1, 1)
    pixels = ((images.float() * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)  # [B, 3, H, W]
    drawn = [to_pixels(STYLES[style](Image.fromarray(np.ascontiguousarray(p.permute(1, 2, 0).numpy()))))
             for p in pixels]
    return normalize_pixels(torch.stack(drawn), images.dtype)  # [B, 3, H, W]


def view(images: torch.Tensor, name: str) -> torch.Tensor:
    if name == "plain":
        return images
    return images.flip(-1) if name == "flip" else styled(images, name)


class ViewAverage(nn.Module):
    """The CLIP with each image embedded as the normalised sum of its views' embeddings."""

    def __init__(self, clip: nn.Module, views: list[str]):
        super().__init__()
        self.clip, self.views = clip, views

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        total = sum(self.clip.encode_image(view(images, name)) for name in self.views)  # [B, D]
        return F.normalize(total, dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(input_ids, attention_mask)

    def temperature_scale(self) -> torch.Tensor:
        return self.clip.temperature_scale()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip")
    parser.add_argument("shards")
    parser.add_argument("sizes", help="comma list of eval image sizes in px")
    parser.add_argument("--views", default="plain,flip",
                        help="comma list of view sets, each views joined by +: plain, flip, " + ", ".join(STYLES))
    args = parser.parse_args()
    view_sets = [name.split("+") for name in args.views.split(",")]
    unknown = {v for views in view_sets for v in views} - {"plain", "flip", *STYLES}
    if unknown:
        parser.error(f"--views: unknown view(s) {', '.join(sorted(unknown))}")
    bundle = load_clip(args.clip)
    cfg = bundle.config
    for size in [int(s) for s in args.sizes.split(",")]:
        eval_set = make_eval_set(resolve_shards(args.shards), size, cfg.data.label_fields)
        for views in view_sets:
            with torch.no_grad():
                metrics = evaluate_clip(ViewAverage(bundle.model, views), bundle.tokenize, eval_set,
                                        cfg.eval.templates, cfg.eval.batch_size)
            print(json.dumps({"size": size, "test_time": "+".join(views),
                              **{k: round(100 * metrics[k], 2) for k in FIGURES if k in metrics}}), flush=True)


if __name__ == "__main__":
    main()
