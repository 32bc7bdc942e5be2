"""Padding-free micro-batches: a batch's samples in one row, each attending only to itself, their common prefix
computed once.

Every sample of a batch starts with the same chat-template text (SmolLM2's default system prompt and the user
header: a third of a caption sample's tokens). Under causal attention that prefix has the same hidden states in
every sample, so the row holds it once, followed by each sample's remaining tokens at the positions they have in
the sample; a bool mask [1, 1, T, T] lets each remainder see the prefix and itself, causally, and nothing else.
The prefix stops before the first image placeholder (each image's features differ) and before the first
supervised token of any sample.

The answer loss is unchanged: each remainder's first label is a prompt token (-100), so no token predicts across
a boundary, and the loss is the sum over the supervised tokens divided by their count, as over a padded batch.
The mask is passed to the LLM as given (transformers does so with a 4-D mask), which SDPA attention reads.
"""
import torch

from mmtool.errors import MmtoolError
from stage2_projector.chat_format import IGNORE_INDEX


def pack_batch(encoded: list[tuple[list[int], list[int]]], image_token_id: int) -> dict[str, torch.Tensor]:
    """{"input_ids", "labels", "position_ids"} [1, T] and "attention_mask" [1, 1, T, T] (bool) from (ids, labels)
    pairs; image placeholders keep their order (sample by sample), so the i-th image still fills the i-th run."""
    prefix = shared_prefix_length(encoded, image_token_id)
    input_ids, labels = list(encoded[0][0][:prefix]), [IGNORE_INDEX] * prefix
    positions, segments = list(range(prefix)), [0] * prefix  # segment 0: the shared prefix
    for segment, (ids, sample_labels) in enumerate(encoded, start=1):
        input_ids += ids[prefix:]
        labels += [IGNORE_INDEX] + sample_labels[prefix + 1:]  # a prompt label: nothing predicts across samples
        positions += range(prefix, len(ids))
        segments += [segment] * (len(ids) - prefix)
    segment_of = torch.tensor(segments)  # [T]
    visible = (segment_of[:, None] == segment_of[None, :]) | (segment_of[None, :] == 0)  # [T, T] query x key
    causal = torch.ones(len(segments), len(segments), dtype=torch.bool).tril()  # [T, T]
    return {"input_ids": torch.tensor([input_ids]), "labels": torch.tensor([labels]),  # [1, T], [1, T]
            "position_ids": torch.tensor([positions]), "attention_mask": (visible & causal)[None, None]}


def shared_prefix_length(encoded: list[tuple[list[int], list[int]]], image_token_id: int) -> int:
    """Leading ids all samples share, before any image placeholder and before the token ahead of any sample's
    first supervised label (that token's label must stay a prompt label), leaving every sample a token of its own."""
    limit = min(min(len(ids) - 1, first_supervised(labels) - 1) for ids, labels in encoded)
    first = encoded[0][0]
    length = 0
    while (length < limit and first[length] != image_token_id
           and all(ids[length] == first[length] for ids, _ in encoded)):
        length += 1
    return length


def first_supervised(labels: list[int]) -> int:
    return next((index for index, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def batch_tokens(batch: dict) -> int:
    """The tokens a padded or packed batch trains on (padding excluded, a shared prefix once)."""
    mask = batch["attention_mask"]
    return int(batch["input_ids"].numel() if mask is None or mask.ndim == 4 else mask.sum())


def check_packable(llm) -> None:
    """Packed rows need attention that reads a bool [1, 1, T, T] mask: SDPA (eager would add it as numbers)."""
    implementation = llm.config._attn_implementation
    if implementation != "sdpa":
        raise MmtoolError(f"data.packed: the LLM runs {implementation!r} attention; packed batches need 'sdpa' "
                          "(or set data.packed: false)")
