"""CLIP / SigLIP losses computed tile by tile: the N×N logit matrix is never built, in forward or in backward.

Same inputs, value, gradients and distributed contract as ClipLoss / SigLipLoss in loss.py (read its docstring);
extra memory is O(N·D + tile²) instead of O(N²). Each loss splits into a sum over all pairs, done by an autograd
Function that recomputes every tile's logits in backward, and a term on the B matching pairs, left to autograd:
  CLIP:   (sum of row LSEs + sum of column LSEs) / 2B - mean_i z_ii        (a bias cancels)
  SigLIP: (sum_ij softplus(z_ij) - sum_i z_ii) / B      since -log sigmoid(-z) = softplus(z) = -log sigmoid(z) + z
with z_ij = scale * x_i.y_j (+ bias). Over W > 1 ranks CLIP gathers features (both directions need every
column); SigLIP passes text blocks around the ring of ranks instead, and their gradients back the same way.
"""
import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from stage1_clip.loss import _rank_and_world, upcast, gather_features


def _tiles(n: int, tile: int) -> list[slice]:
    return [slice(start, min(start + tile, n)) for start in range(0, n, tile)]


def _without_autocast(step):
    """Backward recomputes forward's tiles: both must round them alike (float32+), whatever autocast is active."""
    @functools.wraps(step)
    def run(ctx, first: torch.Tensor, *args):
        with torch.autocast(first.device.type, enabled=False):
            return step(ctx, first, *args)
    return run


class _LogSumExpSum(torch.autograd.Function):
    """sum_i LSE_j(z_ij) over the rows of z = scale * q @ k.T, plus over its columns when `columns`.

    Pass 1 merges each tile's LSEs into running row / column LSEs; backward recomputes each tile, turns it into
    softmax probabilities with those LSEs and accumulates dq, dk and dscale.
    """

    @staticmethod
    @_without_autocast
    def forward(ctx, queries, keys, scale, tile: int, columns: bool):
        scaled = queries * scale  # [M, D]; same rounding as the dense (scale * x) @ y.T
        row_lse = queries.new_full(queries.shape[:1], float("-inf"))  # [M]
        col_lse = keys.new_full(keys.shape[:1], float("-inf"))  # [N]
        for rows in _tiles(len(queries), tile):
            for cols in _tiles(len(keys), tile):
                logits = scaled[rows] @ keys[cols].T  # [t, t]
                row_lse[rows] = torch.logaddexp(row_lse[rows], logits.logsumexp(1))
                if columns:
                    col_lse[cols] = torch.logaddexp(col_lse[cols], logits.logsumexp(0))
        ctx.save_for_backward(queries, keys, scale, row_lse, col_lse)
        ctx.tile, ctx.columns = tile, columns
        return row_lse.sum() + col_lse.sum() if columns else row_lse.sum()

    @staticmethod
    @_without_autocast
    def backward(ctx, grad):
        queries, keys, scale, row_lse, col_lse = ctx.saved_tensors
        scaled = queries * scale  # [M, D]
        d_scaled, d_keys = torch.zeros_like(queries), torch.zeros_like(keys)  # [M, D], [N, D]
        for rows in _tiles(len(queries), ctx.tile):
            for cols in _tiles(len(keys), ctx.tile):
                logits = scaled[rows] @ keys[cols].T  # [t, t]
                probs = (logits - row_lse[rows, None]).exp_()  # softmax over each row
                if ctx.columns:
                    probs += logits.sub_(col_lse[None, cols]).exp_()  # + softmax over each column
                d_scaled[rows].addmm_(probs, keys[cols])
                d_keys[cols].addmm_(probs.T, scaled[rows])
        d_scale = grad * torch.dot(d_scaled.flatten(), queries.flatten())  # sum_i q_i . dL/d(scale q_i)
        return d_scaled.mul_(grad * scale), d_keys.mul_(grad), d_scale, None, None


def _check_same_batch(batch: int, device: torch.device) -> None:
    """The ring's fixed-size receive buffers need equal batches; fail clearly on every rank instead of hanging."""
    _, world = _rank_and_world()
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([batch], device=device))
    sizes = [int(c) for c in counts]
    assert len(set(sizes)) == 1, f"the SigLIP ring needs the same batch size on every rank, got {sizes} (by rank)"


def _shift(x: torch.Tensor, tag: int) -> tuple[torch.Tensor, list]:
    """Start sending `x` to the next rank and receiving the previous rank's into a new buffer."""
    rank, world = _rank_and_world()
    incoming = torch.empty_like(x)
    requests = dist.batch_isend_irecv([dist.P2POp(dist.isend, x, (rank + 1) % world, tag=tag),
                                       dist.P2POp(dist.irecv, incoming, (rank - 1) % world, tag=tag)])
    return incoming, requests


class _RingSoftplusSum(torch.autograd.Function):
    """sum_ij softplus(scale * x_i.y_j + bias) over this rank's images and every rank's texts.

    Step k of W scores the texts of rank (rank - k) mod W while the next block is in flight. Backward runs the
    ring again: each text block travels with an accumulator of its gradient, which every rank adds to, and one
    last hop brings the accumulator home, summed over ranks as the gather's backward in loss.py would do.
    """

    @staticmethod
    @_without_autocast
    def forward(ctx, images, texts, scale, bias, tile: int):
        _, world = _rank_and_world()
        scaled = images * scale  # [B, D]
        row_sums = images.new_zeros(images.shape[:1])  # [B]
        block = texts  # [B, D], rank (rank - step)'s texts
        for step in range(world):
            if step < world - 1:
                incoming, requests = _shift(block, tag=0)
            for rows in _tiles(len(images), tile):
                for cols in _tiles(len(block), tile):
                    minus_logits = torch.addmm(-bias, scaled[rows], block[cols].T, alpha=-1)  # [t, t]
                    row_sums[rows] -= F.logsigmoid(minus_logits).sum(1)  # softplus, rounded as the dense loss
            if step < world - 1:
                for request in requests:
                    request.wait()
                block = incoming
        ctx.save_for_backward(images, texts, scale, bias)
        ctx.tile = tile
        return row_sums.sum()

    @staticmethod
    @_without_autocast
    def backward(ctx, grad):
        images, texts, scale, bias = ctx.saved_tensors
        _, world = _rank_and_world()
        scaled = images * scale  # [B, D]
        weighted = scaled * grad  # [B, D]; text gradients leave this rank scaled by this rank's upstream grad
        d_scaled, d_bias = torch.zeros_like(images), torch.zeros_like(bias)  # [B, D], []
        block, d_block = texts, torch.zeros_like(texts)  # [B, D] each; d_block: d(sum over ranks so far)/d(block)
        for step in range(world):
            requests = []
            if step < world - 1:
                incoming, requests = _shift(block, tag=0)
            for rows in _tiles(len(images), ctx.tile):
                for cols in _tiles(len(block), ctx.tile):
                    probs = torch.addmm(bias, scaled[rows], block[cols].T).sigmoid_()  # [t, t] d softplus / d z
                    d_bias += probs.sum()
                    d_scaled[rows].addmm_(probs, block[cols])
                    d_block[cols].addmm_(probs.T, weighted[rows])
            if world > 1:
                d_incoming, more = _shift(d_block, tag=1)
                for request in requests + more:
                    request.wait()
                block, d_block = (incoming if step < world - 1 else None), d_incoming
        d_scale = grad * torch.dot(d_scaled.flatten(), images.flatten())  # sum_i x_i . dL/d(scale x_i)
        return d_scaled.mul_(grad * scale), d_block, d_scale, grad * d_bias, None


def _scalar(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).reshape(())  # shape (1,) or () -> (), so the loss stays 0-dim


class _TiledLoss(nn.Module):
    def __init__(self, tile_size: int = 1024):
        super().__init__()
        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        self.tile_size = tile_size


class TiledClipLoss(_TiledLoss):
    """ClipLoss (symmetric InfoNCE) over tile_size × tile_size blocks of logits."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        images, texts = upcast(image_features), upcast(text_features)  # [B, D]
        scale = _scalar(logit_scale, images.dtype)
        _, world = _rank_and_world()
        if world == 1:  # one matrix: its rows are image->text, its columns text->image; one pass gives both
            lse = _LogSumExpSum.apply(images, texts, scale, self.tile_size, True)
        else:  # this rank's rows of the global matrix, and its columns read as rows of the transpose
            lse = (_LogSumExpSum.apply(images, gather_features(texts), scale, self.tile_size, False)
                   + _LogSumExpSum.apply(texts, gather_features(images), scale, self.tile_size, False))
        positives = scale * (images * texts).sum(-1)  # [B]
        loss = lse / (2 * len(images)) - positives.mean()
        if logit_bias is None:
            return loss
        # The bias shifts every logit, so it cancels; adding it on both sides keeps it in the graph (grad 0, not
        # None, which DDP would call an unused parameter).
        bias = _scalar(logit_bias, images.dtype)
        return loss + bias - bias


class TiledSigLipLoss(_TiledLoss):
    """SigLipLoss over tile_size × tile_size blocks of logits; across ranks texts go round a ring, not gathered."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        if logit_bias is None:
            raise ValueError("TiledSigLipLoss needs logit_bias (the model's learnt bias, shape (1,))")
        images, texts = upcast(image_features), upcast(text_features)  # [B, D]
        scale, bias = _scalar(logit_scale, images.dtype), _scalar(logit_bias, images.dtype)
        _, world = _rank_and_world()
        if world > 1:
            _check_same_batch(len(images), images.device)
        pairs = _RingSoftplusSum.apply(images, texts, scale, bias, self.tile_size)
        positives = scale * (images * texts).sum(-1) + bias  # [B]
        return (pairs - positives.sum()) / len(images)


def build_tiled_loss(kind: str, tile_size: int) -> nn.Module:
    losses = {"clip": TiledClipLoss, "siglip": TiledSigLipLoss}
    if kind not in losses:
        raise ValueError(f"unknown loss type {kind!r}; expected one of {sorted(losses)}")
    return losses[kind](tile_size)
