"""A benchmark's training command run in its own process with its peak memory sampled, and its markdown table."""
import os
import subprocess
import sys
import time
from pathlib import Path

from gpu_figures import gpu_memory_used

ROOT = Path(__file__).resolve().parent.parent


def run_monitored(command: list[str], threads: int, log_path: Path, gpu: bool = False) -> dict:
    """Runs a training command; peak RSS of its main process and peak PSS of its process tree, in GiB (and, with
    `gpu`, the peak memory nvidia-smi reports)."""
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **({} if gpu else {"DS_ACCELERATOR": "cpu"})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    peak_rss = peak_pss = peak_gpu = 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        main = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [main, *main.children(recursive=True)]
                peak_rss = max(peak_rss, main.memory_info().rss)
                peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in tree))
            except psutil.Error:
                pass  # a process ended between listing and reading
            if gpu:
                peak_gpu = max(peak_gpu, gpu_memory_used())
            time.sleep(0.5)
    if proc.returncode:
        sys.exit(f"{command[0]} failed (exit {proc.returncode}); log: {log_path}\n{log_path.read_text()[-3000:]}")
    return {"peak_rss_GiB": round(peak_rss / 2**30, 2), "peak_tree_pss_GiB": round(peak_pss / 2**30, 2),
            **({"peak_gpu_GiB": round(peak_gpu / 2**30, 1)} if gpu else {})}


def print_table(header: list[str], rows: list[dict]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row.get(h, "")) for h in header) + " |")
