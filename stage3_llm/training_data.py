"""What stage 3 trains and validates on: the configured conversation files, encoded for the aligned model."""
import sys
from functools import partial

import numpy as np

from mmtool import distributed
from mmtool.data.reading.images import eval_transform
from stage2_projector.checkpoint import VlmBundle
from stage3_llm.config import FinetuneConfig
from stage3_llm.conversations import ConversationDataset, read_conversations


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
    """data.train (a seeded subset of data.max_samples when set) and the first data.val_samples of data.val, with
    the model's tokenizer, image placeholders and image size."""
    image_size = bundle.record["vision"]["image_size"]
    encode = partial(ConversationDataset, tokenizer=bundle.tokenizer, image_token=bundle.llm.identity["image_token"],
                     num_image_tokens=bundle.num_image_tokens, image_transform=lambda img: eval_transform(img, image_size),
                     max_length=cfg.data.max_length)
    conversations, source = read_conversations(cfg.data.train, cfg.data.image_folder, cfg.data.image_shards)
    conversations, note = capped(conversations, cfg.data.max_samples, cfg.train.seed, cfg.data.train)
    if note and distributed.is_main():
        print(note, file=sys.stderr)
    train_set = encode(conversations, source)
    val_set = None
    if cfg.data.val:
        val_conversations, val_source = read_conversations(cfg.data.val, cfg.data.image_folder, cfg.data.image_shards)
        val_set = encode(val_conversations[:cfg.data.val_samples], val_source)
    return train_set, val_set
