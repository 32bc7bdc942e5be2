"""The projector from image-tower features to LLM input embeddings: `linear` or `mlpNx_gelu` (LLaVA's names)."""
import re

from torch import nn

from mmtool.errors import MmtoolError


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """`linear`, or `mlpNx_gelu`: N linear layers, GELU between them (mlp2x_gelu is LLaVA-1.5's projector).
    Parameter names are `0.weight`, `2.weight`, ... for the linear layers of the MLP."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match or int(match.group(1)) < 1:
        raise MmtoolError(f"model.projector: unknown projector {kind!r} (known: linear, mlpNx_gelu with N >= 1)")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)
