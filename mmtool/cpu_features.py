"""What this machine's CPU can run: the features that change which precisions train and how fast.

Machines of one kind differ in CPU model (an Intel Xeon with AMX and avx512_fp16, an AMD EPYC with avx512_bf16
only). Whether fp16 training runs is DeepSpeed's decision (its CPU accelerator asks oneDNN), so mmtool asks
DeepSpeed rather than repeating its rule; the instruction-set flags are read only to explain the answer.
"""
from pathlib import Path

from mmtool.errors import MmtoolError

# Flags from /proc/cpuinfo that decide bf16 / fp16 matmul support and speed in oneDNN.
REPORTED_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


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


def accelerator_name() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def fp16_supported() -> bool:
    """DeepSpeed's own answer (on CPU: oneDNN has native fp16 kernels, i.e. avx512_fp16 or AMX-FP16)."""
    from deepspeed.accelerator import get_accelerator

    return bool(get_accelerator().is_fp16_supported())


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
