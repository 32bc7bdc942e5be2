"""LLaVA-format conversation data: reading, validation, a torch Dataset + collate, and each epoch's batches.

A file is a JSON list or JSONL of records
`{"id"?: ..., "image"?: "x.png", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt",
"value": "..."}, ...]}`. Turns alternate human/gpt starting with human; a record with an image has exactly one
`<image>` marker in its human turns, one without has none. Image references resolve, in this order, to a sample
key of the given webdataset shards (`image_shards`), a file under `image_folder`, or a file relative to the JSON
file. Every problem is one line naming the file and the record index.
"""
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from mmtool.data.reading.images import BadSample, load_image
from mmtool.data.reading.relayout import Layout, origin_positions
from mmtool.data.reading.shard_images import ShardImages, shard_images_by_key
from mmtool.data.reading.text_files import read_utf8, utf8_lines
from mmtool.errors import MmtoolError
from stage2_projector.chat_format import IGNORE_INDEX, encode_conversation
from stage2_projector.packing import pack_batch

IMAGE_MARKER = "<image>"
ROLE_OF = {"human": "user", "gpt": "assistant"}


@dataclass
class Conversation:
    where: str  # "file.json#index" for messages
    turns: list[dict]  # [{"role": "user"|"assistant", "content": str}]
    image: str | None  # the reference as written in the file
    extra: dict  # the record's other fields (id, task, ...)


@dataclass
class ImageSource:
    """Where image references point: shard samples by key, a folder, or the JSON file's folder."""
    base: Path
    folder: Path | None = None
    shard_images: ShardImages | None = None

    def exists(self, reference: str) -> bool:
        if self.shard_images is not None:
            return reference in self.shard_images
        return self.path(reference).is_file()

    def read(self, reference: str) -> bytes:
        if self.shard_images is not None:
            return self.shard_images.read(reference)  # BadSample when the shards hold no usable image
        return self.path(reference).read_bytes()

    def path(self, reference: str) -> Path:
        return (self.folder or self.base) / reference


def read_conversations(path: str | Path, image_folder: str | Path | None = None,
                       image_shards: str | None = None) -> tuple[list[Conversation], ImageSource]:
    """Validated conversations of a LLaVA JSON / JSONL file and where their images are."""
    path = Path(path)
    if not path.is_file():
        raise MmtoolError(f"conversation file {path} does not exist")
    records = _read_records(path)
    source = ImageSource(path.parent, Path(image_folder) if image_folder else None,
                         shard_images_by_key(image_shards) if image_shards else None)
    if source.folder is not None and not source.folder.is_dir():
        raise MmtoolError(f"image folder {source.folder} does not exist")
    conversations = [_parse_record(record, f"{path}#{index}", source) for index, record in enumerate(records)]
    if not conversations:
        raise MmtoolError(f"{path}: no conversations")
    return conversations, source


def _read_records(path: Path) -> list:
    if path.suffix == ".jsonl":
        return [_parsed(line, f"{path}:{number}") for number, line in utf8_lines(path) if line.strip()]
    records = _parsed(read_utf8(path), str(path))
    if not isinstance(records, list):
        raise MmtoolError(f"{path}: expected a JSON list of conversation records")
    return records


def _parsed(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MmtoolError(f"{where}: invalid JSON ({err})") from None


def _parse_record(record, where: str, source: ImageSource) -> Conversation:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise MmtoolError(f"{where}: a record needs a 'conversations' list")
    turns = []
    for index, turn in enumerate(record["conversations"]):
        if not isinstance(turn, dict) or turn.get("from") not in ROLE_OF or not isinstance(turn.get("value"), str):
            raise MmtoolError(f"{where}: turn {index} must be {{'from': 'human'|'gpt', 'value': str}}")
        expected = "human" if index % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise MmtoolError(f"{where}: turn {index} is from {turn['from']!r}, expected {expected!r} "
                              "(turns alternate human/gpt starting with human)")
        turns.append({"role": ROLE_OF[turn["from"]], "content": turn["value"]})
    if not turns or turns[-1]["role"] != "assistant":
        raise MmtoolError(f"{where}: the conversation must end with a gpt turn")
    image = record.get("image")
    markers = sum(turn["content"].count(IMAGE_MARKER) for turn in turns)
    expected_markers = 0 if image is None else 1
    if markers != expected_markers:
        has = f"has image {image!r}" if image is not None else "has no image"
        raise MmtoolError(f"{where}: {markers} {IMAGE_MARKER} markers but the record {has} "
                          f"(expected {expected_markers})")
    if any(IMAGE_MARKER in turn["content"] for turn in turns if turn["role"] == "assistant"):
        raise MmtoolError(f"{where}: {IMAGE_MARKER} in a gpt turn")
    if image is not None:
        if not isinstance(image, str):
            raise MmtoolError(f"{where}: 'image' must be a string, got {image!r}")
        if not source.exists(image):
            place = "the image shards" if source.shard_images is not None else source.path(image)
            raise MmtoolError(f"{where}: image {image!r} not found ({place})")
    extra = {key: value for key, value in record.items() if key not in ("conversations", "image")}
    return Conversation(where, turns, image, extra)


class ConversationDataset(torch.utils.data.Dataset):
    """Encoded conversations (all encoded up front, so a bad sample fails before training starts)."""

    def __init__(self, conversations: list[Conversation], source: ImageSource, tokenizer, image_token: str,
                 num_image_tokens: int, image_transform: Callable[[Image.Image], torch.Tensor],
                 max_length: int | None = None):
        self.conversations = conversations
        self.source = source
        self.image_transform = image_transform
        self.encoded = [encode_conversation(tokenizer, c.turns, image_token, num_image_tokens,
                                            max_length=max_length, sample=c.where) for c in conversations]

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict:
        """Raises BadSample when the conversation's image cannot be read or decoded."""
        conversation = self.conversations[index]
        ids, labels = self.encoded[index]
        pixels = None
        if conversation.image is not None:
            try:
                data = self.source.read(conversation.image)
            except OSError as err:
                raise BadSample("unreadable_image", f"{conversation.where}: image {conversation.image!r}: "
                                                    f"{err.strerror}") from None
            pixels = self.image_transform(load_image(data))  # [3, S, S]
        return {"input_ids": ids, "labels": labels, "pixel_values": pixels}


def readable_items(dataset: ConversationDataset, indices: list[int], skipped: Counter) -> list[dict]:
    """The items of `indices` whose image decodes; the others are counted in `skipped` by reason."""
    items = []
    for index in indices:
        try:
            items.append(dataset[index])
        except BadSample as err:
            skipped[err.reason] += 1
    return items


def training_items(dataset: ConversationDataset, indices: list[int], skipped: Counter) -> list[dict]:
    """A micro-batch of `len(indices)` items: a conversation whose image cannot be decoded is counted and its place
    taken by a copy of a good one of the batch (when none is, by the next decodable conversation after the batch's
    first), so every batch keeps its size and a resumed run sees the same batches."""
    good = readable_items(dataset, indices, skipped)
    if not good:
        good = [_stand_in(dataset, indices[0])]
    return [good[i % len(good)] for i in range(len(indices))]


def _stand_in(dataset: ConversationDataset, after: int) -> dict:
    for offset in range(1, len(dataset) + 1):
        try:
            return dataset[(after + offset) % len(dataset)]
        except BadSample:
            continue
    raise MmtoolError(f"{dataset.conversations[0].where.split('#')[0]}: no conversation's image can be read")


def collate_conversations(items: list[dict], pad_id: int, packed: bool = False,
                          image_token_id: int | None = None) -> dict:
    """Right-padded batch, or with `packed` one padding-free row (stage2_projector/packing.py); pixel_values
    stacks the images of the samples that have one, in order (the Hugging Face LLaVA convention: image i fills
    the i-th run of image tokens)."""
    images = [item["pixel_values"] for item in items if item["pixel_values"] is not None]
    pixel_values = torch.stack(images) if images else None  # [N_images, 3, S, S]
    if packed:
        return {**pack_batch([(item["input_ids"], item["labels"]) for item in items], image_token_id),
                "pixel_values": pixel_values}
    length = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)  # [B, T]
    for row, item in enumerate(items):
        size = len(item["input_ids"])
        input_ids[row, :size] = torch.tensor(item["input_ids"])
        labels[row, :size] = torch.tensor(item["labels"])
        attention_mask[row, :size] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "pixel_values": pixel_values}


def epoch_batches(count: int, batch_size: int, seed: int, epoch: int, rank: int, world: int,
                  micro_batches: int, origin: Layout | None = None) -> list[list[int]]:
    """This rank's micro-batches of an epoch: a seeded permutation, dealt round-robin to the ranks (the same list
    on every run, so resuming skips exactly the batches already trained on). `origin`: the layout the epoch began
    on when another (a run resumed on another number of ranks reads on in its order: relayout.py)."""
    order = np.random.default_rng([seed, epoch]).permutation(count)
    current = Layout(world, 1, batch_size)
    origin = origin or current
    dealt = [order[origin_rank::origin.world] for origin_rank in range(origin.world)]
    return [[int(dealt[origin_rank][origin_batch * origin.batch_size + offset])
             for origin_rank, origin_batch, offset in origin_positions(origin, current, rank, batch)]
            for batch in range(micro_batches)]
