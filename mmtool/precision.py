"""The precision a loaded model runs in when it only evaluates or answers (training takes its precision from the
DeepSpeed config). bf16 is what the bf16 configs train the matmuls in, and faster than fp32 on CPUs with bf16
instructions (avx512_bf16, AMX: eval-llava 13% less wall time, bench/RESULTS.md); fp32 reproduces earlier figures."""
import torch

from mmtool.errors import MmtoolError

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


def dtype_of(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise MmtoolError(f"--precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]
