"""A tiny untrained CLIP written as an mmtool checkpoint, for the export and index tests (random weights are
enough: those tests compare two ways of computing the same embeddings)."""
from pathlib import Path

import torch

from mmtool.data.reading.loader import resolve_shards
from stage1_clip.checkpoint import save_clip
from stage1_clip.config import ClipConfig, ModelConfig, TextConfig, VisionConfig
from stage1_clip.model import CLIP
from stage1_clip.tokenizer_setup import train_tokenizer

TINY_VIT = VisionConfig(type="vit", image_size=32, patch_size=8, width=64, layers=2, heads=4)
TINY_TEXT = TextConfig(type="transformer", context_length=24, width=48, layers=2, heads=4)


def write_tiny_clip(shards: Path, path: Path, vision: VisionConfig = TINY_VIT, seed: int = 0,
                    head: str = "linear", style_views: tuple[str, ...] = ()) -> Path:
    cfg = ClipConfig(model=ModelConfig(embed_dim=32, head=head, vision=vision, text=TINY_TEXT))
    cfg.eval.style_views = list(style_views)
    cfg.data.train, cfg.data.val = str(shards / "train-*.tar"), str(shards / "val-*.tar")
    tokenizer = train_tokenizer(resolve_shards(cfg.data.train), vocab_size=400, limit=10_000)
    torch.manual_seed(seed)
    model = CLIP(cfg.model, cfg.loss, tokenizer.vocab_size).eval()
    save_clip(path, cfg, model.state_dict(), tokenizer, model)
    return path
