"""Holding back an optimizer update after a non-finite loss, the same way under every ZeRO stage.

DeepSpeed's ZeRO wrappers skip a step whose gradients overflow, but ZeRO-0 with a torch optimizer does not, and a
NaN loss can come with finite gradients. So the engine holds the update itself: the AdamW below leaves weights and
moments untouched while `hold` is set, and the schedule does not advance (as over DeepSpeed's own skipped steps).
"""
from typing import Callable

import torch

from mmtool import distributed
from mmtool.errors import MmtoolError


class HoldableAdamW(torch.optim.AdamW):
    """torch AdamW whose step does nothing while `hold` is set."""

    hold = False

    def step(self, closure=None):
        return None if self.hold else super().step(closure)


class HoldableSchedule(torch.optim.lr_scheduler.LambdaLR):
    """A LambdaLR that stays where it is while `held()` says so."""

    def __init__(self, optimizer, lr_lambda, held: Callable[[], bool]):
        self._held = held
        super().__init__(optimizer, lr_lambda)

    def step(self, *args, **kwargs):
        if not self._held():
            super().step(*args, **kwargs)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("_held")  # a function of this process, not part of the schedule
        return state


def any_rank(flag: torch.Tensor) -> bool:
    """True when `flag` (a bool scalar) is set on at least one rank; every rank must call this."""
    flag = flag.detach().to(torch.int32).reshape(1)
    if distributed.world_size() > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def count_nonfinite(engine, progress, limit: int, log) -> None:
    """After a step: the engine held back its update when the loss was non-finite on some rank; `limit` such steps
    in a row stop the run. Counts into `progress` (mmtool.train_state.Progress), reports through `log` (a RunLog)."""
    if not engine.update_skipped:
        progress.nonfinite_in_a_row = 0
        return
    progress.nonfinite_steps += 1
    progress.nonfinite_in_a_row += 1
    log.message(f"step {progress.step}: non-finite loss, update skipped ({progress.nonfinite_in_a_row} in a row)")
    if progress.nonfinite_in_a_row >= limit:
        raise MmtoolError(f"{limit} steps in a row had a non-finite loss (last: step {progress.step}); stopped "
                          "(lower train.lr, check the data, or raise train.max_nonfinite_steps)")
