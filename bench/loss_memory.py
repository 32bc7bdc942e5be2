"""Peak extra memory and time of one loss forward + backward, dense (loss.py) vs tiled (tiled_loss.py).

Each measurement runs in its own process: after a warm-up at min(N, 4,096) the kernel's peak-RSS mark is reset
(/proc/self/clear_refs), so "peak extra" is the high-water RSS of the step above what was resident before it
(features included, their gradients and every temporary counted). Float32 features on all CPU threads.

    .venv/bin/python bench/loss_memory.py                                  # N = 4,096 ... 65,536, d = 512
    .venv/bin/python bench/loss_memory.py --sizes 16384 --kinds clip --tile 2048
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _kib(field: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))


def run_one(kind: str, method: str, n: int, dim: int, tile: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)

    from stage1_clip.loss import build_loss
    from stage1_clip.tiled_loss import build_tiled_loss

    def inputs(rows: int) -> list:
        features = [F.normalize(torch.randn(rows, dim), dim=-1).requires_grad_() for _ in range(2)]  # [rows, dim]
        return features + [torch.tensor([10.0], requires_grad=True), torch.tensor([-2.5], requires_grad=True)]

    loss_fn = build_tiled_loss(kind, tile) if method == "tiled" else build_loss(kind)
    loss_fn(*inputs(min(n, 4096))).backward()  # warm-up: thread pool, kernels at full-size tiles
    features = inputs(n)
    open("/proc/self/clear_refs", "w").write("5")  # peak-RSS mark := current RSS
    before = _kib("VmRSS:")
    start = time.perf_counter()
    loss_fn(*features).backward()
    seconds = time.perf_counter() - start
    return {"kind": kind, "method": method, "n": n, "seconds": seconds,
            "peak_extra_GiB": (_kib("VmHWM:") - before) / 2**20, "threads": torch.get_num_threads()}


def measure(kind: str, method: str, n: int, dim: int, tile: int, threads: int) -> dict:
    child = subprocess.run([sys.executable, __file__, "--one", json.dumps([kind, method, n, dim, tile, threads])],
                           capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        sys.exit(f"{kind} / {method} / N={n} failed:\n{child.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--kinds", nargs="+", default=["clip", "siglip"])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per measurement (0: torch's default)")
    parser.add_argument("--dense-max", type=int, default=16384,
                        help="largest N for the dense loss (it holds several N×N float32 matrices at once)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one measurement, printed as JSON
        print("RESULT " + json.dumps(run_one(*json.loads(args.one))))
        return
    # Other work on the machine skews the times (both columns alike only if it is steady): say how busy it was.
    print(f"d = {args.dim}, float32, tile = {args.tile}, threads = {args.threads or 'default'}; one forward + "
          f"backward per cell, each in a fresh process; load average before: {os.getloadavg()[0]:.2f}")
    print("| loss | N | dense s | dense peak GiB | tiled s | tiled peak GiB | tiled / dense time |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        for n in args.sizes:
            tiled = measure(kind, "tiled", n, args.dim, args.tile, args.threads)
            if n <= args.dense_max:
                dense = measure(kind, "dense", n, args.dim, args.tile, args.threads)
                dense_cells = f"{dense['seconds']:.2f} | {dense['peak_extra_GiB']:.2f}"
                ratio = f"{tiled['seconds'] / dense['seconds']:.2f}"
            else:
                dense_cells, ratio = f"skipped | one N² float32 matrix alone is {n * n * 4 / 2**30:.0f} GiB", "-"
            print(f"| {kind} | {n} | {dense_cells} | {tiled['seconds']:.2f} | {tiled['peak_extra_GiB']:.2f} | "
                  f"{ratio} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
