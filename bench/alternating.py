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


def seconds_printed_by(code: str, env: dict[str, str] | None = None) -> float:
    """Runs `code` in a new Python process (os.environ plus `env`) and returns the last number it prints."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, **(env or {})})
    return float(result.stdout.split()[-1])


def print_medians(title: str, seconds: dict[str, list[float]]) -> None:
    width = max(len(title), *map(len, seconds)) + 2
    print(f"{title:<{width}}{'median s':>10}{'min s':>8}{'max s':>8}")
    for way, values in seconds.items():
        print(f"{way:<{width}}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
