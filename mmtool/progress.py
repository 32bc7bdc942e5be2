"""Progress bars (count, rate, ETA) for the long steps that are not training: data builders, evaluations."""
from tqdm import tqdm


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it"):
    """tqdm on stderr, drawn only where stderr is a terminal: logs, pipes and tests get no bar lines."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None, mininterval=0.5)
