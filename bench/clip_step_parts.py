"""A stage-1 step of the default CLIP in parts, on synthetic images: the frozen trunk's forward (what the feature
cache saves), as the tower runs it and as the cache's folded copy does (EfficientNetLite0Tower.folded_copy:
BatchNorm folded into the convolutions), and the live part's forward and backward (the last blocks, the head conv
and the projection head), in fp32, bf16 autocast and bf16 weights (what DeepSpeed's bf16 mode trains with), at each
torch thread count asked for. Compare with a training step's time to see what the loader, the cache and the engine
add.

    .venv/bin/python bench/clip_step_parts.py --threads 1,2
"""
import argparse
import copy
import time

import torch

from mmtool.config import load_config
from stage1_clip.config import ClipConfig
from stage1_clip.feature_cache import frozen_stages
from stage1_clip.model import CLIP


def seconds_per_call(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/clip/default.yaml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, help="instead of the config's model.vision.image_size")
    args = parser.parse_args()
    cfg = load_config(ClipConfig, args.config)
    if args.image_size:
        cfg.model.vision.image_size = args.image_size
    model = CLIP(cfg.model, cfg.loss, None)
    tower = model.vision.eval()
    cut = frozen_stages(tower, cfg.train.lr, cfg.train.param_groups)
    size = cfg.model.vision.image_size
    images = torch.randn(args.batch, 3, size, size)  # [B, 3, H, W]
    print(f"{args.config}: batch {args.batch} at {size} px, the trunk = the first {cut} of {tower.num_stages()} "
          f"stages, head {cfg.model.head}")
    print(f"{'threads':>7}  {'precision':>13}  {'trunk forward ms':>16}  {'folded trunk ms':>15}  "
          f"{'live fwd+bwd ms':>15}")
    folded_fp32 = tower.folded_copy(cut)
    folded_bf16 = copy.deepcopy(folded_fp32).bfloat16()
    bf16_model = copy.deepcopy(model).bfloat16()
    bf16_model.vision.eval()
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for precision in ("fp32", "bf16 autocast", "bf16 weights"):
            runs = bf16_model if precision == "bf16 weights" else model
            folded = folded_bf16 if precision == "bf16 weights" else folded_fp32
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast")
            with torch.no_grad(), autocast:
                trunk_s = seconds_per_call(lambda: runs.vision.prefix(images, cut), args.repeats)
                folded_s = seconds_per_call(lambda: folded.prefix(images, cut), args.repeats)
                trunk = runs.vision.prefix(images, cut)  # [B, C, h, w]

            def live():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
                    embedding = runs.image_projection(runs.vision.finish(trunk, cut))  # [B, D]
                embedding.float().sum().backward()

            live_s = seconds_per_call(live, args.repeats)
            print(f"{threads:>7}  {precision:>13}  {trunk_s * 1000:>16.0f}  {folded_s * 1000:>15.0f}  "
                  f"{live_s * 1000:>15.0f}")


if __name__ == "__main__":
    main()
