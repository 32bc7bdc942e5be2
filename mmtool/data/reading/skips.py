"""The line a command that reads data ends with: how many samples it skipped, and why."""
from collections import Counter
from typing import Mapping

import torch


def skip_summary(skipped: Mapping[str, int], total: int) -> str:
    """'skipped 36 of 216 samples: 20 unreadable image, 16 empty caption', the most frequent reason first."""
    reasons = sorted(((count, reason) for reason, count in skipped.items() if count), key=lambda p: (-p[0], p[1]))
    listed = ", ".join(f"{count} {reason.replace('_', ' ')}" for count, reason in reasons)
    return f"skipped {sum(skipped.values())} of {total} samples" + (f": {listed}" if listed else "")


class BatchSkips:
    """A training run's skips, from the `skipped` counts its loaders put in each batch, and the samples it used."""

    def __init__(self):
        self.skipped, self.used = Counter(), 0

    def add(self, batch) -> None:
        if isinstance(batch, dict):  # a stage's own batch type carries no counts
            self.skipped.update(batch.get("skipped") or {})

    def trained(self, samples: int) -> None:
        self.used += samples

    def summary(self) -> str:
        """Every rank calls it (the counts are summed over ranks)."""
        parts = [(self.skipped, self.used)]
        if torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, (self.skipped, self.used))
        skipped = sum((counts for counts, _ in parts), Counter())
        return skip_summary(skipped, sum(used for _, used in parts) + sum(skipped.values()))
