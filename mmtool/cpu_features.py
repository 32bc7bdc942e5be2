"""What this machine's CPU can run: the features that change which precisions train and how fast.

Machines of one kind differ in CPU model (an Intel Xeon with AMX and avx512_fp16, an AMD EPYC with avx512_bf16
only, an AMD EPYC without AVX-512). Whether fp16 training runs is DeepSpeed's decision (its CPU accelerator asks
oneDNN), so mmtool asks DeepSpeed rather than repeating its rule; the instruction-set flags are read only to
explain the answer. bf16 always runs, but where oneDNN has no bf16 kernels PyTorch emulates it about 100x slower
than fp32 (bench/RESULTS.md, "CPU: bf16 without AVX-512"): there a bf16 config trains in fp32 and says so.
"""
import os
import sys
from pathlib import Path

import torch

from mmtool.deepspeed_import import import_deepspeed
from mmtool.errors import MmtoolError

# Flags from /proc/cpuinfo that decide bf16 / fp16 matmul support and speed in oneDNN.
REPORTED_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
# "1" keeps bf16 where it is emulated (bf16 numerics checks; reproducing a bf16 run's figures exactly).
KEEP_SLOW_BF16 = "MMTOOL_SLOW_BF16"
_told = set()  # the sources whose fp32 fallback this process has reported


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (empty where /proc/cpuinfo does not exist)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _accelerator():
    import_deepspeed()
    from deepspeed.accelerator import get_accelerator

    return get_accelerator()


def accelerator_name() -> str:
    return _accelerator().device_name()


def fp16_supported() -> bool:
    """DeepSpeed's own answer (on CPU: oneDNN has native fp16 kernels, i.e. avx512_fp16 or AMX-FP16)."""
    return bool(_accelerator().is_fp16_supported())


def fp16_missing_reason() -> str:
    """Why fp16 cannot train here, in one line (names the missing CPU features)."""
    absent = [flag for flag in ("avx512_fp16", "amx_fp16") if flag not in cpu_flags()]
    return (f"DeepSpeed's {accelerator_name()} accelerator reports no fp16 support on this machine "
            f"({cpu_model()}; missing CPU feature{'s' if len(absent) > 1 else ''}: {', '.join(absent) or 'none'})")


def check_precision(ds_config: dict, source: str) -> None:
    """Refuses a DeepSpeed config whose precision this machine cannot train, before DeepSpeed raises deep inside."""
    if ds_config.get("fp16", {}).get("enabled") and not fp16_supported():
        raise MmtoolError(f"{source}: fp16 is enabled but {fp16_missing_reason()}; use a bf16 config such as "
                          "configs/deepspeed/zero2_bf16.json")


def bf16_native() -> bool:
    """Whether bf16 matmuls and convolutions have real kernels here: a CUDA device, or a CPU with AVX-512, for which
    oneDNN has bf16 kernels (native instructions with avx512_bf16 or AMX)."""
    return torch.cuda.is_available() or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_to_fp32() -> bool:
    """True where bf16 would be emulated and MMTOOL_SLOW_BF16=1 does not ask to keep it."""
    return not bf16_native() and os.environ.get(KEEP_SLOW_BF16) != "1"


def fp32_notice(what: str) -> str:
    return (f"note: {what} in fp32 here: bf16 has no oneDNN kernels on this CPU ({cpu_model()}: no AVX-512) and is "
            f"emulated about 100x slower than fp32; {KEEP_SLOW_BF16}=1 keeps bf16")


def tell_once(source: str, message: str) -> None:
    if source not in _told:
        _told.add(source)
        print(message, file=sys.stderr, flush=True)


def without_emulated_bf16(ds_config: dict, source: str) -> dict:
    """`ds_config` with bf16 (weights or autocast) turned off where bf16 would be emulated, said once per source;
    unchanged elsewhere. Everything downstream (the engine, the feature caches' namespaces) reads the result."""
    autocast = ds_config.get("torch_autocast", {})
    wants_bf16 = ds_config.get("bf16", {}).get("enabled") or (
        autocast.get("enabled") and str(autocast.get("dtype", "bf16")) in ("bf16", "bfloat16", "torch.bfloat16"))
    if not wants_bf16 or not bf16_to_fp32():
        return ds_config
    tell_once(source, fp32_notice(f"{source} trains"))
    config = dict(ds_config)
    config.pop("bf16", None)
    config.pop("torch_autocast", None)
    return config
