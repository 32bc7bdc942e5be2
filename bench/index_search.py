"""Image index figures on this machine: build throughput (decode + embed + thumbnail, images/s) with the torch
checkpoint and with its ONNX export, and search latency over synthetic unit vectors (flat vs HNSW).

    .venv/bin/python bench/index_search.py                                   # demo checkpoint, emoji val split
    .venv/bin/python bench/index_search.py --source 'data/emoji/train-*.tar' --sizes 10000 100000
"""
import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from mmtool.export.onnx import export_clip_onnx
from mmtool.index.image_index import ImageIndex, new_faiss_index
from stage1_clip.checkpoint import load_clip


def build_rates(checkpoint: str, source: str) -> list[tuple[str, int, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_clip_onnx(load_clip(checkpoint), Path(checkpoint), Path(tmp) / "onnx")
        for name, model in (("torch", checkpoint), ("onnxruntime", Path(tmp) / "onnx")):
            start = time.perf_counter()
            index, _ = ImageIndex.build(source, model, Path(tmp) / f"index_{name}", progress=False)
            rows.append((name, len(index.items), time.perf_counter() - start))
    return rows


def search_latency(n: int, dim: int, index_type: str, queries: int, k: int, rng) -> dict:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # Queries near stored vectors, as real queries land near their matches.
    planted = rng.choice(n, queries, replace=False)
    picked = vectors[planted]
    query = picked + 0.5 * rng.standard_normal(picked.shape, dtype=np.float32) / np.sqrt(dim)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    index = new_faiss_index(index_type, dim)
    start = time.perf_counter()
    index.add(vectors)
    build = time.perf_counter() - start
    latencies = []
    for row in query:
        start = time.perf_counter()
        _, ids = index.search(row[None], k)
        latencies.append(time.perf_counter() - start)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, true_ids = exact.search(query, k)
    _, got_ids = index.search(query, k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(true_ids, got_ids)])
    # The vector each query was made from is its one real match; the other k - 1 exact neighbours of random
    # vectors are near-ties, which approximate search is not expected to reproduce.
    planted_found = np.mean(got_ids[:, 0] == planted)
    return {"build_s": build, "p50_ms": 1000 * np.median(latencies), "p95_ms": 1000 * np.percentile(latencies, 95),
            "recall": recall, "planted": planted_found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="ckpt/demo/clip.pt")
    parser.add_argument("--source", default="data/emoji/val-*.tar")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    print(f"build: {args.checkpoint} over {args.source}, {faiss.omp_get_max_threads()} threads")
    print(f"{'runtime':<14}{'images':>8}{'seconds':>9}{'images/s':>10}")
    for name, count, seconds in build_rates(args.checkpoint, args.source):
        print(f"{name:<14}{count:>8}{seconds:>9.1f}{count / seconds:>10.1f}")
    print(f"\nsearch: {args.queries} single queries, k={args.k}, dim {args.dim}, synthetic unit vectors")
    print(f"{'vectors':>8}  {'index':<6}{'add s':>8}{'p50 ms':>9}{'p95 ms':>9}{'top1=match':>11}{'recall@k':>10}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        for index_type in ("flat", "hnsw"):
            r = search_latency(n, args.dim, index_type, args.queries, args.k, rng)
            print(f"{n:>8}  {index_type:<6}{r['build_s']:>8.2f}{r['p50_ms']:>9.3f}{r['p95_ms']:>9.3f}"
                  f"{r['planted']:>11.3f}{r['recall']:>10.3f}")


if __name__ == "__main__":
    main()
