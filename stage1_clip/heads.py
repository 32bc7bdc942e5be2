"""Projection heads: each tower's pooled output [B, W] into the shared embedding space [B, D].

linear: CLIP's single bias-free matrix (what Hugging Face's CLIP formats hold).
mlp: a hidden layer as wide as the tower, GELU, then the matrix. With a locked tower the head is all that adapts
its features, and a linear map can only rotate and rescale them (issue 19's recipe space).
"""
from torch import nn

from mmtool.errors import MmtoolError

HEADS = ("linear", "mlp")


def projection_head(kind: str, width: int, embed_dim: int, field: str = "model.head") -> nn.Module:
    """A `kind` head from `width` tower features to `embed_dim`; the last matrix starts at std width**-0.5."""
    if kind not in HEADS:
        raise MmtoolError(f"{field}: unknown head {kind!r} (known: {', '.join(HEADS)})")
    output = nn.Linear(width, embed_dim, bias=False)
    nn.init.normal_(output.weight, std=width ** -0.5)
    if kind == "linear":
        return output
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), output)


def head_flops(kind: str, width: int, embed_dim: int) -> int:
    """Forward FLOPs of a `kind` head for one input."""
    if kind not in HEADS:
        raise MmtoolError(f"model.head: unknown head {kind!r} (known: {', '.join(HEADS)})")
    hidden = 2 * width * width if kind == "mlp" else 0
    return hidden + 2 * width * embed_dim
