"""Prints the CPU features that change what the test suite runs, so a CI log says why a test skipped.

Usage: .venv/bin/python scripts/cpu_features.py   (scripts/test.sh runs it before pytest)
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from mmtool.cpu_features import (REPORTED_FLAGS, accelerator_name, bf16_native, cpu_flags, cpu_model,  # noqa: E402
                                 fp16_supported)

# What each answer switches in the suite.
FP16_TESTS = {True: "tests/stage1_clip/test_train_variants.py::test_fp16_with_dynamic_loss_scaling runs; "
                    "test_fp16_config_is_refused_in_one_line_where_the_cpu_has_no_fp16 skips",
              False: "tests/stage1_clip/test_train_variants.py::test_fp16_with_dynamic_loss_scaling skips; "
                     "test_fp16_config_is_refused_in_one_line_where_the_cpu_has_no_fp16 runs"}


def main() -> None:
    flags = cpu_flags()
    fp16 = fp16_supported()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, DeepSpeed accelerator: {accelerator_name()}")
    print("features: " + "  ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in REPORTED_FLAGS))
    print(f"fp16 training (DeepSpeed's answer): {'yes' if fp16 else 'no'} -> {FP16_TESTS[fp16]}")
    print("bf16 matmuls: " + ("AMX tiles (fast)" if "amx_bf16" in flags else
                               "avx512_bf16 (slower, other rounding)" if "avx512_bf16" in flags else
                               "oneDNN kernels" if bf16_native() else
                               "emulated (about 100x slower than fp32) -> bf16 configs train in fp32, "
                               "tests that check bf16 itself set MMTOOL_SLOW_BF16=1")
          + "; learning tests assert with margins measured across seeds and precisions")


if __name__ == "__main__":
    main()
