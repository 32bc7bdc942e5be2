"""DeepSpeed, imported without its autotuner's mlflow probe.

`import deepspeed` imports DeepSpeed's autotuner, which tries `import mlflow` at once: about 1.1 s of every
process's start-up (each training command, each launched rank) where mlflow is installed (the `trackers` extra),
for a DeepSpeed feature mmtool does not use. The probe is made to fail; mmtool's mlflow tracker
(mmtool/trackers/mlflow_tracker.py) imports mlflow normally afterwards.
"""
import importlib
import sys
from types import ModuleType


def import_deepspeed() -> ModuleType:
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    block_probe = "mlflow" not in sys.modules
    if block_probe:
        sys.modules["mlflow"] = None  # `import mlflow` raises ImportError while the entry is None
    try:
        return importlib.import_module("deepspeed")
    finally:
        if block_probe:
            sys.modules.pop("mlflow", None)  # only the None entry can be there: it blocks any real import
