"""Start-up cost of DeepSpeed in a fresh process: a plain `import deepspeed` (whose autotuner probes for mlflow)
against mmtool's `import_deepspeed()` (mmtool/deepspeed_import.py), which every training process and rank uses.

    .venv/bin/python bench/deepspeed_import.py --repeats 5

Each repeat is a new Python process (torch imported first, outside the timed part); the table gives the median
wall time of the timed import in seconds. The two ways alternate, so a busy machine slows both alike.
"""
import argparse
import functools

from alternating import child_seconds, print_medians, time_alternating

WAYS = {"import deepspeed": "import deepspeed",
        "import_deepspeed()": "from mmtool.deepspeed_import import import_deepspeed; import_deepspeed()"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {"DS_ACCELERATOR": "cpu"}
    seconds = time_alternating({way: functools.partial(child_seconds, "import torch", statement, env)
                                for way, statement in WAYS.items()}, args.repeats)
    print_medians("way", seconds)


if __name__ == "__main__":
    main()
