"""A CLIP checkpoint's retrieval and zero-shot figures with its eval images at other sizes than it trained at, and
averaged over each image and its mirror image (test-time flip): does a larger or flipped test input help?

    .venv/bin/python bench/clip_test_time_input.py runs/folds/s1200/twemoji/clip.pt \
        "data/folds/twemoji/heldout_val-*.tar" 96,112,128

One JSON line per (size, plain | flip), figures in %.
"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from mmtool.data.reading.loader import make_eval_set, resolve_shards
from stage1_clip.checkpoint import load_clip
from stage1_clip.evaluate import evaluate_clip

FIGURES = ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "zero_shot_group_acc",
           "zero_shot_group_from_names_acc")


class FlipAverage(nn.Module):
    """The CLIP with each image embedded as the normalised sum of its and its mirror image's embeddings."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        both = self.clip.encode_image(images) + self.clip.encode_image(images.flip(-1))  # [B, D]
        return F.normalize(both, dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(input_ids, attention_mask)

    def temperature_scale(self) -> torch.Tensor:
        return self.clip.temperature_scale()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip")
    parser.add_argument("shards")
    parser.add_argument("sizes", help="comma list of eval image sizes in px")
    args = parser.parse_args()
    bundle = load_clip(args.clip)
    cfg = bundle.config
    for size in [int(s) for s in args.sizes.split(",")]:
        eval_set = make_eval_set(resolve_shards(args.shards), size, cfg.data.label_fields)
        for name, model in (("plain", bundle.model), ("flip", FlipAverage(bundle.model))):
            with torch.no_grad():
                metrics = evaluate_clip(model, bundle.tokenize, eval_set, cfg.eval.templates, cfg.eval.batch_size)
            print(json.dumps({"size": size, "test_time": name,
                              **{k: round(100 * metrics[k], 2) for k in FIGURES if k in metrics}}), flush=True)


if __name__ == "__main__":
    main()
