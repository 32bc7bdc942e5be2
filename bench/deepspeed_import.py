"""Start-up cost of DeepSpeed in a fresh process: a plain `import deepspeed` (whose autotuner probes for mlflow)
against mmtool's `import_deepspeed()` (mmtool/deepspeed_import.py), which every training process and rank uses.

    .venv/bin/python bench/deepspeed_import.py --repeats 5

Each repeat is a new Python process (torch imported first, outside the timed part); the table gives the median
wall time of the timed import in seconds. The two ways alternate, so a busy machine slows both alike.
"""
import argparse
import os
import statistics
import subprocess
import sys

WAYS = {"import deepspeed": "import deepspeed",
        "import_deepspeed()": "from mmtool.deepspeed_import import import_deepspeed; import_deepspeed()"}
CHILD = """
import time, torch
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""


def timed_import(statement: str) -> float:
    result = subprocess.run([sys.executable, "-c", CHILD.format(statement=statement)], capture_output=True,
                            text=True, check=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seconds = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way, statement in WAYS.items():
            seconds[way].append(timed_import(statement))
    print(f"{'way':<22}{'median s':>10}{'min s':>8}{'max s':>8}")
    for way, values in seconds.items():
        print(f"{way:<22}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")


if __name__ == "__main__":
    main()
