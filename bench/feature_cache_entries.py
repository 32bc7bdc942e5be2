"""Reading a feature-cache entry back: torch.save/torch.load files (the format before 2026-11-30) against
mmtool's raw entries (mmtool/feature_cache.py: a 64-byte header and the tensor's bytes), for the entry shapes the
stages cache. Files are written to a temporary folder and read once before timing, so the figures are the
format's own cost with the files in the page cache (as in a training run, which reads what it just wrote).

    .venv/bin/python bench/feature_cache_entries.py
"""
import argparse
import io
import tempfile
import time
from pathlib import Path

import torch

from mmtool.feature_cache import decode_entry, encode_entry

# (what, one entry): the shapes and dtypes the default recipes cache
ENTRIES = (("stage 1 image trunk (block 14, 96 px, bf16)", torch.randn(192, 3, 3).to(torch.bfloat16)),
           ("stage 1 MiniLM caption embedding (fp32)", torch.randn(384)),
           ("stages 2-3 tower features (3x3 + pooled, fp32)", torch.randn(10, 1280)))


def saved(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def time_reads(paths: list[Path], read) -> float:
    for path in paths:  # into the page cache
        read(path)
    start = time.perf_counter()
    for path in paths:
        read(path)
    return (time.perf_counter() - start) / len(paths) * 1e6  # microseconds an entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'entry':<50}{'bytes (load / raw)':>20}{'torch.load us':>15}{'raw us':>8}{'speed-up':>10}")
    with tempfile.TemporaryDirectory() as folder:
        for what, tensor in ENTRIES:
            old, new = [], []
            for i in range(args.entries):
                row = tensor + i if tensor.is_floating_point() else tensor
                (old_path := Path(folder) / f"{len(what)}_{i}.pt").write_bytes(saved(row))
                (new_path := Path(folder) / f"{len(what)}_{i}.bin").write_bytes(encode_entry(row))
                old.append(old_path)
                new.append(new_path)
            load_us = time_reads(old, lambda path: torch.load(path, weights_only=True))
            raw_us = time_reads(new, lambda path: decode_entry(path.read_bytes()))
            sizes = f"{old[0].stat().st_size} / {new[0].stat().st_size}"
            print(f"{what:<50}{sizes:>20}{load_us:>15.0f}{raw_us:>8.0f}{load_us / raw_us:>9.1f}x")


if __name__ == "__main__":
    main()
