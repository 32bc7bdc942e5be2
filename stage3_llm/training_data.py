"""What stage 3 trains and validates on: the configured conversation files, encoded for the aligned model, with
the tower's tags after each image when model.tower_tags asks for them (stage2_projector/tower_tags.py), and the
training images in one seeded styled view each when data.style_views asks for it."""
import hashlib
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from PIL import Image

from mmtool import distributed
from mmtool.data.reading.augment import StyleAugment
from mmtool.data.reading.images import BadSample, eval_transform, load_image
from mmtool.errors import MmtoolError
from mmtool.progress import progress
from stage2_projector.checkpoint import VlmBundle
from stage2_projector.tower_tags import tagged
from stage3_llm.config import FinetuneConfig
from stage3_llm.conversations import Conversation, ConversationDataset, ImageSource, read_conversations
from stage3_llm.tower import build_tower_tags, load_tower

TAG_BATCH = 64  # images per tower pass while tagging


def capped(conversations: list, max_samples: int | None, seed: int, where: str) -> tuple[list, str | None]:
    """A seeded subset of `max_samples` conversations in file order, and the line saying so (a recipe's cap must
    never shrink a user's data silently); all of them and None when there is no cap or nothing to cut."""
    if max_samples is None or max_samples >= len(conversations):
        return conversations, None
    keep = np.random.default_rng(seed).permutation(len(conversations))[:max_samples]
    return ([conversations[i] for i in sorted(keep)],
            f"data.max_samples={max_samples}: training on {max_samples} of the {len(conversations)} conversations "
            f"in {where} (a seeded subset; --set data.max_samples=null trains on all)")


def finetune_datasets(cfg: FinetuneConfig, bundle: VlmBundle) -> tuple[ConversationDataset, ConversationDataset | None]:
    """data.train (a seeded subset of data.max_samples when set, in data.style_views) and the first
    data.val_samples of data.val, with the model's tokenizer, image placeholders and image size."""
    image_size = bundle.record["vision"]["image_size"]
    encode = partial(ConversationDataset, tokenizer=bundle.tokenizer, image_token=bundle.llm.identity["image_token"],
                     num_image_tokens=bundle.num_image_tokens, max_length=cfg.data.max_length)
    conversations, source = read_conversations(cfg.data.train, cfg.data.image_folder, cfg.data.image_shards)
    conversations, note = capped(conversations, cfg.data.max_samples, cfg.train.seed, cfg.data.train)
    if note and distributed.is_main():
        print(note, file=sys.stderr)
    view = training_view(cfg.data.style_views, image_size, cfg.train.seed)
    tagged_conversations = with_tower_tags(bundle, conversations, source, view, cfg.model.tower_tags.train_noise,
                                           cfg.train.seed)
    train_set = encode(tagged_conversations, source, image_transform=view)
    val_set = None
    if cfg.data.val:
        val_conversations, val_source = read_conversations(cfg.data.val, cfg.data.image_folder, cfg.data.image_shards)
        as_is = partial(eval_transform, size=image_size)
        val_set = encode(with_tower_tags(bundle, val_conversations[:cfg.data.val_samples], val_source, as_is),
                         val_source, image_transform=as_is)
    return train_set, val_set


def training_view(style: StyleAugment, size: int, seed: int) -> Callable[[Image.Image], torch.Tensor]:
    """The training images' transform: the eval crop, styled by `style` (only its rendering switches: after_crop)
    from a generator seeded by the run's seed and the image's pixels, so the tags and every later read of an image
    see one view (and the feature cache, keyed by the tensor, serves it)."""
    ignored = [name for name in ("background", "rotation", "caption_templates", "keyword_dropout")
               if getattr(style, name)]
    if ignored:
        raise MmtoolError(f"data.style_views.{ignored[0]}: stage 3 restyles the centre crop only (grayscale, "
                          "posterize, outline, contour, stroke, color_jitter, hue)")
    if style == StyleAugment():
        return partial(eval_transform, size=size)

    def styled(img: Image.Image) -> torch.Tensor:
        digest = hashlib.sha256(img.tobytes()).digest()
        return eval_transform(img, size, style, np.random.default_rng([seed, int.from_bytes(digest[:8], "little")]))
    return styled


def set_tower_tags(cfg: FinetuneConfig, bundle: VlmBundle) -> None:
    """Gives the model the tags model.tower_tags asks for, over data.train's names and groups (embedded by the
    stage-1 CLIP the model was aligned on), and records them; with 0 names and 0 groups, takes away any the
    starting model had."""
    settings = cfg.model.tower_tags
    if settings.train_noise < 0:
        raise MmtoolError(f"model.tower_tags.train_noise: a noise deviation is >= 0, got {settings.train_noise}")
    bundle.record.pop("tower_tags", None)
    bundle.model.tower_tags = None
    if settings.names <= 0 and settings.groups <= 0:
        return
    if not bundle.record["vision"].get("clip_embedding_token"):
        raise MmtoolError(f"model.tower_tags needs the CLIP embedding token, which {cfg.model.base or 'this model'} "
                          "has not: align with model.clip_embedding_token true (model.align.clip_embedding_token for "
                          "a single-stage run), or turn the tags off "
                          "(--set model.tower_tags.names=0 --set model.tower_tags.groups=0)")
    conversations, _ = read_conversations(cfg.data.train, cfg.data.image_folder, cfg.data.image_shards)
    clip = load_tower(bundle.record, str(cfg.model.base or cfg.model.vision), None, any_vision=False)
    bundle.model.tower_tags = build_tower_tags(clip, conversations, settings.names, settings.groups,
                                                settings.layout, settings.style_views)
    bundle.record["tower_tags"] = bundle.model.tower_tags.record()


def with_tower_tags(bundle: VlmBundle, conversations: list[Conversation], source: ImageSource,
                    image_transform: Callable[[Image.Image], torch.Tensor], noise: float = 0.0,
                    seed: int = 0) -> list[Conversation]:
    """The conversations with each image's tag line after its `<image>` marker (as generation writes it), of the
    view `image_transform` makes, ranked from a seeded noisy embedding when `noise` is set
    (model.tower_tags.train_noise); the same conversations when the model has no tags. An image that cannot be
    read gets none: training skips it."""
    if bundle.model.tower_tags is None:
        return conversations
    generator = torch.Generator().manual_seed(seed)
    images = sorted({c.image for c in conversations if c.image is not None})
    lines = {}
    bar = progress(total=len(images), desc="tower tags", unit="img")
    for start in range(0, len(images), TAG_BATCH):
        readable = {}
        for image in images[start:start + TAG_BATCH]:
            try:
                readable[image] = image_transform(load_image(source.read(image)))  # [3, S, S]
            except (BadSample, OSError):
                continue
        if readable:
            lines.update(zip(readable, bundle.model.tag_lines(torch.stack(list(readable.values())), noise, generator)))
        bar.update(min(TAG_BATCH, len(images) - start))
    bar.close()
    return [replace(c, turns=[{**turn, "content": tagged(turn["content"], lines[c.image])} for turn in c.turns])
            if c.image in lines else c for c in conversations]
