"""What bench/vs_open_clip.py --gpu reports beyond samples/s: the card, its memory in use and MFU.

Imports are inside the functions: vs_open_clip.py also runs as a child under open_clip's own venv, which holds
neither torch's CUDA build nor mmtool.
"""
import subprocess


def measured_matmul_flops() -> float:
    """bf16 FLOP/s of an 8192^3 matmul on GPU 0: what the card reaches, below its datasheet figure."""
    import torch

    from gpu_bench import matmul_peak_flops

    return matmul_peak_flops(torch.device("cuda", 0), 8192)


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def gpu_memory_used() -> int:
    """Bytes in use on GPU 0, all processes (nvidia-smi)."""
    query = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                           capture_output=True, text=True)
    return int(query.stdout.strip() or 0) * 2**20


def mfu(model_cfg, batch: int, samples_per_s: float, matmul: float, datasheet_tflops: float,
        extra_sets: list[str]) -> dict:
    """Model FLOPs per second over the measured and the datasheet bf16 rate; none under patch dropout, whose FLOPs
    are not the model's."""
    from stage1_clip.flops import train_step_flops

    if model_cfg.vision.patch_dropout or any("patch_dropout" in s for s in extra_sets):
        return {"MFU_measured": "n/a (patch dropout)", "MFU_datasheet": ""}
    achieved = train_step_flops(model_cfg, batch) * samples_per_s / batch
    return {"MFU_measured": f"{achieved / matmul:.1%}", "MFU_datasheet": f"{achieved / (datasheet_tflops * 1e12):.1%}"}
