"""Stage-1 training throughput on this machine: samples/s and peak memory per config.

Each config runs in its own process (so peak RSS is its own) through the real engine, model and
loss on synthetic batches, which isolates the training step from data loading.

    .venv/bin/python bench/train_throughput.py                      # tiny_vit and vit_b32
    .venv/bin/python bench/train_throughput.py --configs configs/clip/tiny_vit.yaml --steps 20
    .venv/bin/python bench/train_throughput.py --configs configs/clip/tiny_vit.yaml --batch-sizes 64 --accum 1 4

With --accum k > 1 a step is k micro-batches through gradient caching (one contrastive batch of k x batch);
`vs_plain` is its time over k plain steps of the same micro-batch (the target is <= 1.35: the extra cost
should be one feature-only forward).

--variants compares config overrides (comma-separated `key=value`, `-` for none), each against the first:

    .venv/bin/python bench/train_throughput.py --configs configs/clip/tiny_vit.yaml --batch-sizes 128 \
        --deepspeed configs/deepspeed/zero0_bf16.json --variants - model.vision.patch_dropout=0.5
    .venv/bin/python bench/train_throughput.py --configs configs/clip/tiny_vit.yaml --batch-sizes 128 \
        --variants - model.vision.grad_checkpointing=true,model.text.grad_checkpointing=true
"""
import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(config: str, batch_size: int, steps: int, warmup: int, deepspeed_config: str, accum: int,
            variant: str) -> dict:
    import torch

    from mmtool.config import load_config
    from mmtool.engine import OptimSettings, TrainEngine
    from stage1_clip.config import ClipConfig
    from stage1_clip.loss import build_loss
    from stage1_clip.model import CLIP
    from stage1_clip.train import train_step

    overrides = [] if variant == "-" else variant.split(",")
    cfg = load_config(ClipConfig, config, [f"data.batch_size={batch_size}", f"train.deepspeed={deepspeed_config}",
                                           *overrides])
    vocab = cfg.tokenizer.vocab_size
    model = CLIP(cfg.model, cfg.loss, vocab)
    engine = TrainEngine(model, cfg.train.deepspeed, batch_size, accum_steps=accum, optim=OptimSettings(
        lr=1e-4, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6, grad_clip=1.0, warmup_steps=1, total_steps=10**6))
    engine.train()
    loss_fn = build_loss(cfg.loss.type)
    size, length = cfg.model.vision.image_size, cfg.model.text.context_length
    images = torch.randn(batch_size, 3, size, size).to(engine.param_dtype)
    input_ids = torch.randint(4, vocab, (batch_size, length))
    input_ids[:, -1] = 3
    mask = torch.ones_like(input_ids)
    micro_batches = [(images, input_ids, mask)] * accum
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        train_step(engine, loss_fn, micro_batches)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    step_time = sorted(times)[len(times) // 2]
    return {"config": config, "deepspeed": deepspeed_config, "batch": f"{batch_size}x{accum}", "variant": variant,
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "step_s": round(step_time, 4), "samples_per_s": round(batch_size * accum / step_time, 1),
            "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/clip/tiny_vit.yaml", "configs/clip/vit_b32.yaml"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 32])
    parser.add_argument("--deepspeed", nargs="+", default=["configs/deepspeed/fp32.json",
                                                           "configs/deepspeed/zero0_bf16.json"])
    parser.add_argument("--accum", nargs="+", type=int, default=[1], help="micro-batches per step")
    parser.add_argument("--variants", nargs="+", default=["-"],
                        help="config overrides per row, comma-separated key=value ('-' = none)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one measurement, printed as JSON
        config, batch, ds, accum, variant = json.loads(args.one)
        print("RESULT " + json.dumps(run_one(config, batch, args.steps, args.warmup, ds, accum, variant)))
        return
    rows = []
    for config, batch in zip(args.configs, args.batch_sizes):
        for ds in args.deepspeed:
            for variant in args.variants:
                plain_step = None
                for accum in args.accum:
                    child = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--warmup",
                                            str(args.warmup), "--one", json.dumps([config, batch, ds, accum, variant])],
                                           capture_output=True, text=True)
                    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
                    if not lines:
                        sys.exit(f"{config} / {ds} / {variant} / accum {accum} failed:\n{child.stderr[-2000:]}")
                    row = json.loads(lines[-1][7:])
                    if accum == 1:
                        plain_step = row["step_s"]
                    row["vs_plain"] = round(row["step_s"] / (accum * plain_step), 2) if plain_step else "-"
                    base = next((r for r in rows if r["config"] == config and r["deepspeed"] == ds
                                 and r["batch"] == row["batch"] and r["variant"] == args.variants[0]), row)
                    row["vs_first_variant"] = round(row["step_s"] / base["step_s"], 2)
                    rows.append(row)
    header = ["config", "deepspeed", "batch", "variant", "params_M", "step_s", "samples_per_s", "vs_plain",
              "vs_first_variant", "peak_rss_GiB", "threads"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]).replace("configs/", "") for h in header) + " |")


if __name__ == "__main__":
    main()
