"""Ways of doing one thing, timed in turn (a busy machine slows every way alike), and their medians as a table."""
import os
import statistics
import subprocess
import sys
from typing import Callable


def time_alternating(ways: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each way's measured seconds, `repeats` rounds of every way in order."""
    seconds = {way: [] for way in ways}
    for _ in range(repeats):
        for way, measure in ways.items():
            seconds[way].append(measure())
    return seconds


def child_seconds(setup: str, timed: str, env: dict[str, str] | None = None) -> float:
    """Wall seconds of `timed` in a new Python process (os.environ plus `env`) that first runs `setup`, untimed."""
    code = f"{setup}\nimport time\nstart = time.perf_counter()\n{timed}\nprint(time.perf_counter() - start)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, **(env or {})})
    return float(result.stdout.split()[-1])


def print_medians(title: str, seconds: dict[str, list[float]]) -> None:
    width = max(len(title), *map(len, seconds)) + 2
    print(f"{title:<{width}}{'median s':>10}{'min s':>8}{'max s':>8}")
    for way, values in seconds.items():
        print(f"{way:<{width}}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
