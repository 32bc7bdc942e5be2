"""Caption pairs as single-turn conversations: user "<image>\\n<instruction>", assistant the caption."""
import zlib

import torch

from stage2_projector.chat_format import IGNORE_INDEX, encode_conversation, image_token_id
from stage2_projector.llm import IMAGE_TOKEN
from stage2_projector.packing import pack_batch


def caption_turns(caption: str, instruction: str) -> list[dict]:
    return [{"role": "user", "content": f"{IMAGE_TOKEN}\n{instruction}"}, {"role": "assistant", "content": caption}]


def pick_instruction(instructions: list[str], key: str) -> str:
    """The same instruction for a sample on every run and rank (crc32 of its key, not Python's salted hash)."""
    return instructions[zlib.crc32(key.encode()) % len(instructions)]


def encode_caption_batch(tokenizer, captions: list[str], keys: list[str], instructions: list[str],
                         num_image_tokens: int, max_length: int, packed: bool = False) -> dict[str, torch.Tensor]:
    """{"input_ids", "attention_mask", "labels"} [B, T], right-padded to the longest sample of the batch; or,
    `packed`, one padding-free row with "position_ids" and a [1, 1, T, T] mask (stage2_projector/packing.py)."""
    encoded = [encode_conversation(tokenizer, caption_turns(caption, pick_instruction(instructions, key)), IMAGE_TOKEN,
                                   num_image_tokens, max_length=max_length, sample=f"sample {key}")
               for caption, key in zip(captions, keys)]
    if packed:
        return pack_batch(encoded, image_token_id(tokenizer, IMAGE_TOKEN))
    return pad_batch(encoded, tokenizer.pad_token_id)


def pad_batch(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)  # [B, T]
    for row, (ids, sample_labels) in enumerate(encoded):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(ids)] = torch.tensor(sample_labels)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
