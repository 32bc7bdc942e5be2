"""bf16 against fp32 matmul throughput on this machine's CPU: where oneDNN has no bf16 kernels (no avx512_bf16 or
AMX), PyTorch emulates bf16 and the bf16 DeepSpeed configs fall back to fp32 (mmtool/cpu_features.py).

    .venv/bin/python bench/bf16_matmul.py

Shapes: a square 1024 matmul, and SmolLM2-135M's MLP up-projection on a stage-3 micro-batch (8 conversations of
~100 tokens, 576 -> 1536). One table row per (shape, dtype), GFLOP/s over the median of `--repeats` calls.
"""
import argparse
import statistics
import time

import torch

from mmtool.cpu_features import bf16_native, cpu_model

SHAPES = {"square 1024 x 1024 @ 1024 x 1024": (1024, 1024, 1024),
          "SmolLM2 MLP 800 x 576 @ 576 x 1536": (800, 576, 1536)}


def gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up: oneDNN picks its kernel on the first call
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(seconds) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{cpu_model()}, {torch.get_num_threads()} torch threads, native bf16 kernels: {bf16_native()}")
    print("| shape | fp32 GFLOP/s | bf16 GFLOP/s | fp32 / bf16 |")
    print("|---|---|---|---|")
    for name, (m, k, n) in SHAPES.items():
        fp32, bf16 = (gflops(m, k, n, dtype, args.repeats) for dtype in (torch.float32, torch.bfloat16))
        print(f"| {name} | {fp32:.1f} | {bf16:.1f} | {fp32 / bf16:.1f}x |")


if __name__ == "__main__":
    main()
