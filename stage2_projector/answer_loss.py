"""The training loss of stages 2-3 from the per-token losses of the supervised answer tokens: their mean per token,
or per conversation.

Per token (LLaVA's choice) a conversation weighs as much as its answer is long: in the emoji instructions a
description's ~25 answer tokens outweigh a yes/no answer's 2 about twelve times, so the short answers that name,
group or judge the image get a small share of the gradient. Per conversation, each sample's mean token loss
counts once in the micro-batch's mean. Which tokens belong to which sample follows from the batch layout: a
padded batch holds one sample per row; in a packed row (stage2_projector/packing.py) a sample starts wherever the
position ids fall back.
"""
import torch

from mmtool.errors import MmtoolError
from stage2_projector.chat_format import IGNORE_INDEX

WEIGHTINGS = ("token", "conversation")


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise MmtoolError(f"train.answer_weighting: unknown {weighting!r} (known: {', '.join(WEIGHTINGS)})")


def answer_loss(token_losses: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None,
                weighting: str = "token") -> torch.Tensor:
    """token_losses [K]: the loss of each supervised token, in row-major order of labels [B, T] (token t+1's
    label is predicted at t); position_ids [B, T] for packed rows, None for padded ones -> a scalar."""
    if weighting == "token":
        return token_losses.sum() / max(token_losses.numel(), 1)
    check_weighting(weighting)
    sample_of_token = sample_ids(labels, position_ids)[:, 1:][labels[:, 1:] != IGNORE_INDEX]  # [K]
    _, sample_of_token, tokens_per_sample = sample_of_token.unique(return_inverse=True, return_counts=True)
    weights = 1.0 / tokens_per_sample[sample_of_token].to(token_losses.dtype)  # [K]
    return (token_losses * weights).sum() / max(len(tokens_per_sample), 1)


def sample_ids(labels: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """[B, T] -> [B, T] the sample each position belongs to, numbered over the whole batch."""
    starts = torch.zeros_like(labels, dtype=torch.bool)  # [B, T]
    starts[:, 0] = True
    if position_ids is not None:
        starts[:, 1:] = position_ids[:, 1:] <= position_ids[:, :-1]
    return starts.flatten().cumsum(0).view_as(labels) - 1  # [B, T]
