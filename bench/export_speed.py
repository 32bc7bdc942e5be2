"""Image and text encoder speed on this machine: torch vs onnxruntime (the `--format onnx` export), fp32.

    .venv/bin/python bench/export_speed.py                              # the demo checkpoint
    .venv/bin/python bench/export_speed.py --checkpoint ckpt/clip/clip.pt --batch 32 --repeats 10

Pixels are random (speed does not depend on content); each timing is the best of --repeats after one warm-up.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from mmtool.export.onnx import OnnxClip, export_clip_onnx
from stage1_clip.checkpoint import load_clip


def best_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="ckpt/demo/clip.pt")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bundle = load_clip(args.checkpoint)
    size = bundle.config.model.vision.image_size
    images = torch.randn(args.batch, 3, size, size)  # [B, 3, S, S]
    captions = [f"a photo of emoji number {i} with a longer description" for i in range(args.batch)]
    ids, mask = bundle.tokenize(captions)
    with tempfile.TemporaryDirectory() as tmp:
        export_clip_onnx(bundle, Path(args.checkpoint), Path(tmp) / "onnx")
        runtime = OnnxClip(Path(tmp) / "onnx", threads=torch.get_num_threads())
        with torch.no_grad():
            rows = [("image", "torch", best_seconds(lambda: bundle.model.encode_image(images), args.repeats)),
                    ("image", "onnxruntime", best_seconds(lambda: runtime.encode_images(images), args.repeats)),
                    ("text", "torch", best_seconds(lambda: bundle.model.encode_text(ids, mask), args.repeats)),
                    ("text", "onnxruntime", best_seconds(lambda: runtime.encode_texts(captions), args.repeats))]
    print(f"checkpoint {args.checkpoint}: {bundle.config.model.vision.type} {size}px, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'encoder':<8}{'runtime':<14}{'items/s':>10}{'ms/batch':>10}")
    for encoder, runtime_name, seconds in rows:
        print(f"{encoder:<8}{runtime_name:<14}{args.batch / seconds:>10.0f}{seconds * 1000:>10.1f}")


if __name__ == "__main__":
    main()
