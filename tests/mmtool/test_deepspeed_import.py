"""DeepSpeed is imported without its autotuner's mlflow probe, and mlflow still imports afterwards."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("mlflow")  # the probe only costs anything where mlflow is installed

CHILD = """
import sys
from mmtool.deepspeed_import import import_deepspeed
deepspeed = import_deepspeed()
from deepspeed.autotuning import autotuner
print("mlflow" in sys.modules, autotuner.has_mlflow, import_deepspeed() is deepspeed)
import mlflow
print(mlflow.__name__)
"""


def test_deepspeed_loads_without_mlflow_and_mlflow_still_imports():
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["False False True", "mlflow"]
