"""What a user watches during long work: a progress bar, plus metrics in JSONL and the trackers of
`train.report_to` (TensorBoard, wandb, MLflow: mmtool/trackers/)."""
import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from mmtool.trackers import Trackers


class RunLog:
    """Only rank 0 writes; other ranks get a silent instance so call sites need no rank checks."""

    def __init__(self, out_dir: Path, total_steps: int, initial_step: int = 0, enabled: bool = True,
                 report_to: list[str] = ("tensorboard",), project: str = "mmtool", config: dict | None = None):
        self.enabled = enabled
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        drop_cut_last_line(out_dir / "metrics.jsonl")
        self.trackers = Trackers(list(report_to), out_dir, project, config or {}, say=tqdm.write)
        self.jsonl = open(out_dir / "metrics.jsonl", "a", buffering=1)
        self.bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, desc="train")

    def progress(self, steps: int, **shown) -> None:
        """Advance the bar and show the latest values next to it."""
        if not self.enabled:
            return
        self.bar.update(steps)
        self.bar.set_postfix({k: _short(v) for k, v in shown.items()}, refresh=False)

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "step": step, "split": split, **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        self.trackers.log(step, split, metrics)

    def evaluation(self, step: int, metrics: dict) -> None:
        """The val record and its `[eval step N]` line; nothing when there was nothing to evaluate."""
        if metrics:
            self.write(step, "val", metrics)
            self.message(f"[eval step {step}] " + "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.jsonl.close()
            self.trackers.close()


class ThroughputWindow:
    """Samples and tokens per second, all ranks together, and the share of the time spent waiting for the loader
    (`data_wait`: near 0 when the step is the bottleneck, near 1 when the data is), since the last log line."""

    def __init__(self):
        self.start, self.samples, self.tokens, self.waiting = time.perf_counter(), 0, 0, 0.0

    def timed(self, batches: Iterable) -> Iterator:
        """`batches` as they come, the time spent waiting for each counted into the window."""
        iterator = iter(batches)
        while True:
            asked = time.perf_counter()
            batch = next(iterator, _END)
            self.waiting += time.perf_counter() - asked
            if batch is _END:
                return
            yield batch

    def add(self, result, world: int) -> None:
        """`result`: the loop's StepResult (this rank's samples and tokens)."""
        self.samples += result.samples * world
        self.tokens += result.tokens * world

    def rates(self) -> dict:
        elapsed = time.perf_counter() - self.start
        rates = {"samples_per_s": self.samples / elapsed, "data_wait": self.waiting / elapsed}
        if self.tokens:
            rates["tokens_per_s"] = self.tokens / elapsed
        self.__init__()
        return rates


_END = object()  # the end of a batch iterator (a batch may be any object)


def _short(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return value


def drop_cut_last_line(path: Path) -> None:
    """A crash can leave the last record without its newline: cut it off, or the next record would be glued to it."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            handle.seek(0)
            handle.truncate(handle.read().rfind(b"\n") + 1)
