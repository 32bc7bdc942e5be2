"""How `mmtool pipeline` starts a training stage: one process, or several under torchrun or the deepspeed launcher.

A stage's `launcher:` in configs/pipeline/*.yaml, e.g. `launcher: {kind: torchrun, args: [--nproc-per-node, "2"]}`;
`args` are the launcher's own (ranks per node, nodes, rendezvous, hostfile), placed before the mmtool command.
"""
import sys
from dataclasses import dataclass, field

from mmtool.errors import MmtoolError

KINDS = ("none", "torchrun", "deepspeed")


@dataclass
class LauncherSpec:
    kind: str = "none"  # none | torchrun | deepspeed
    args: list[str] = field(default_factory=list)


def check_launcher(spec: LauncherSpec, where: str) -> None:
    if spec.kind not in KINDS:
        raise MmtoolError(f"{where}.launcher.kind: {spec.kind!r} is not one of {', '.join(KINDS)}")
    if spec.kind == "none" and spec.args:
        raise MmtoolError(f"{where}.launcher.args: {spec.args} given without a launcher (kind: torchrun or deepspeed)")


def process_command(spec: LauncherSpec | None, mmtool_args: list[str]) -> list[str]:
    """The command line that runs `mmtool <mmtool_args>` under the launcher (this Python's modules)."""
    kind, args = (spec.kind, spec.args) if spec else ("none", [])
    if kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "mmtool", *mmtool_args]
    if kind == "deepspeed":  # the deepspeed launcher takes --module, not -m
        return [sys.executable, "-m", "deepspeed.launcher.runner", *args, "--module", "mmtool", *mmtool_args]
    return [sys.executable, "-m", "mmtool", *mmtool_args]
