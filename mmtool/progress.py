"""Progress bars (count, rate, ETA) for the long steps that are not training: data builders, evaluations, exports."""
from contextlib import contextmanager

from tqdm import tqdm


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", bar_format: str | None = None):
    """tqdm on stderr, drawn only where stderr is a terminal: logs, pipes and tests get no bar lines."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None, mininterval=0.5,
                bar_format=bar_format)


class StepBar:
    """A bar over the few named steps of one long command (read a checkpoint, convert, write): how many are done,
    the time so far, and the step under way beside it. No rate or ETA: the steps differ too much in length."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(self, desc: str, total: int):
        self.bar = progress(total=total, desc=desc, unit="step", bar_format=self.FORMAT)

    @contextmanager
    def step(self, name: str):
        self.bar.set_postfix_str(name)
        yield
        self.bar.update(1)

    def __enter__(self) -> "StepBar":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.set_postfix_str("done" if exc[0] is None else "failed", refresh=False)
        self.bar.close()
