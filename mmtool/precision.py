"""The precision a loaded model runs in when it only evaluates or answers (training takes its precision from the
DeepSpeed config). bf16 is what the bf16 configs train the matmuls in, and faster than fp32 on CPUs with bf16
instructions (avx512_bf16, AMX: eval-llava 13% less wall time, bench/RESULTS.md); fp32 reproduces earlier figures.
Where bf16 would be emulated (a CPU without those instructions) the LLM answers in fp32 (mmtool/cpu_features.py)."""
import torch

from mmtool.cpu_features import bf16_to_fp32, fp32_notice, tell_once
from mmtool.errors import MmtoolError

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


def dtype_of(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise MmtoolError(f"--precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def answering_precision(precision: str) -> str:
    """The precision a model answers in: `precision`, or fp32 where bf16 would be emulated (said once)."""
    dtype_of(precision)
    if precision == "bf16" and bf16_to_fp32():
        tell_once("answering", fp32_notice("the LLM answers"))
        return "fp32"
    return precision
