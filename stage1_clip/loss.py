"""Contrastive losses for stage 1: CLIP (softmax over the batch) and SigLIP (a sigmoid per pair).

Inputs are the towers' L2-normalised features and the logit *multiplier* (the model already did clamp + exp).
Everything is computed in at least float32: bf16 features are cast up before the similarity matmul.

Distributed contract (torch.distributed initialised, world size W > 1, the same B on every rank)
---------------------------------------------------------------------------------------------
Call the loss on the rank's own [B, D] features; it gathers the other ranks' features *with* gradient
and returns this rank's *local* loss L_r:
  - CLIP:   cross-entropy of this rank's B images against all W*B texts, and of this rank's B texts
            against all W*B images (targets offset by rank * B), averaged over the 2B rows.
  - SigLIP: the sigmoid loss of this rank's B images against all W*B texts, divided by B.
Then mean_r L_r equals the single-process loss on the concatenated W*B batch (L). The backward of the
gather sums every rank's gradient for a slice back to its owner, so a rank's gradient is W * dL/dtheta
restricted to its own samples; the data-parallel engine (DDP / DeepSpeed) averages gradients over ranks,
which makes the applied gradient exactly dL/dtheta, logit scale and bias included. The loss value a rank
reports is L_r, not L: average it over ranks to log L.
"""
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def upcast(x: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 -> fp32 (softmax over thousands of logits needs it); fp64 stays fp64.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` [B, ...] from every rank in rank order -> [W*B, ...]; gradients flow back to each owner.

    Without a process group (or with one rank) this returns `x` itself.
    """
    _, world = _rank_and_world()
    if world == 1:
        return x
    # A tiny collective up front: a mismatched all_gather would fail obscurely or hang.
    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(c) for c in counts]
    assert len(set(sizes)) == 1, f"gather_features needs the same batch size on every rank, got {sizes} (by rank)"
    return torch.cat(dist_fn.all_gather(x), dim=0)  # [W*B, ...]


def _positive_columns(batch: int, device: torch.device) -> torch.Tensor:
    """Column of each local sample's own pair among the gathered W*B: rows sit at rank * B onward."""
    rank, _ = _rank_and_world()
    return rank * batch + torch.arange(batch, device=device)  # [B]


class ClipLoss(nn.Module):
    """Symmetric InfoNCE: image->text and text->image cross-entropy, averaged (see module docstring for W > 1).

    `negative_text_features` [B, K, D] (optional) are extra captions per image, e.g. mined hard negatives: image
    i's softmax runs over all N texts plus its own K. They must not be captions of image i (the caller's duty);
    they stay local to the rank and do not enter the text->image direction.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None,
                negative_text_features: torch.Tensor | None = None) -> torch.Tensor:
        images, texts = upcast(image_features), upcast(text_features)  # [B, D]
        all_images, all_texts = gather_features(images), gather_features(texts)  # [N, D], N = W*B
        logits_per_image = logit_scale * images @ all_texts.T  # [B, N]
        logits_per_text = logit_scale * texts @ all_images.T  # [B, N]
        if negative_text_features is not None:
            negatives = upcast(negative_text_features)  # [B, K, D]
            extra = logit_scale * torch.einsum("bd,bkd->bk", images, negatives)  # [B, K]
            logits_per_image = torch.cat([logits_per_image, extra], dim=1)  # [B, N + K]
        if logit_bias is not None:
            # A shared shift cancels in the softmax; kept so both losses read logits the same way.
            logits_per_image = logits_per_image + logit_bias
            logits_per_text = logits_per_text + logit_bias
        targets = _positive_columns(images.shape[0], images.device)  # [B]
        return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


class SigLipLoss(nn.Module):
    """-1/N * sum_ij log sigmoid(z_ij * (scale * x_i.y_j + bias)), z = +1 on matching pairs, else -1 (SigLIP).

    N is the number of images; with W > 1 ranks each rank scores its own images against all texts (every pair
    once), so only texts are gathered.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        if logit_bias is None:
            raise ValueError("SigLipLoss needs logit_bias (the model's learnt bias, shape (1,))")
        images, texts = upcast(image_features), upcast(text_features)  # [B, D]
        all_texts = gather_features(texts)  # [N, D], N = W*B
        logits = logit_scale * images @ all_texts.T + logit_bias  # [B, N]
        batch = images.shape[0]
        signs = -torch.ones_like(logits)  # [B, N]
        signs[torch.arange(batch, device=logits.device), _positive_columns(batch, logits.device)] = 1.0
        return -F.logsigmoid(signs * logits).sum() / batch


def build_loss(kind: str) -> nn.Module:
    losses = {"clip": ClipLoss, "siglip": SigLipLoss}
    if kind not in losses:
        raise ValueError(f"unknown loss type {kind!r}; expected one of {sorted(losses)}")
    return losses[kind]()
