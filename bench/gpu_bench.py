"""CLIP training steps on one GPU: samples/s, step time, peak memory and MFU at the largest batch that fits.

    bash bench/gpu.sh                                    # ViT-B/32 and ViT-B/16, every variant, a few minutes
    python bench/gpu_bench.py --models vit_b16 --variants zero2 zero2+compile
    python bench/gpu_bench.py --cpu-smoke                # every code path on a toy model on the CPU, < 1 min

Synthetic tensors (random pixels, random token ids) isolate the step from data loading. Every variant is bf16
autocast over fp32 weights with AdamW and gradient clipping at 1.0:
  zero2, zero2+compile      mmtool's engine (DeepSpeed ZeRO-2, one process); +compile = train.compile
  zero0, zero0+compile      the same engine with ZeRO stage 0 (plain data parallelism): what one GPU needs
  torch, torch+compile      the same model and loss in a plain torch loop (fused AdamW): the fallback when
                            DeepSpeed is not importable, and the reference for DeepSpeed's overhead
  torch+compile_model       the plain loop with the whole CLIP compiled (projections and normalisation in the
                            graph), as open_clip compiles, against +compile's two towers
  open_clip, open_clip+compile   open_clip's CLIP and ClipLoss with the same architecture, when importable
Memory: peak_mem_GiB is the allocator's peak over the timed steps; state_GiB what stays allocated between steps
(weights, optimizer state, inputs), so peak - state is what one step's activations and workspaces take.
Batch: doubled from --start-batch until a step runs out of memory (or --max-batch), then bisected to a multiple of
--batch-granularity, with the plain torch step (the torch variants keep the most memory); a variant that still
runs out of memory retries at 7/8 of the batch.
MFU = stage1_clip.flops.train_step_flops(model, batch) / step time / bf16 peak, where the peak is measured here by
timing a large bf16 matmul (the card's achievable dense rate, below its datasheet figure).
"""
import argparse
import datetime
import functools
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stage1_clip.flops import train_step_flops  # noqa: E402

MODEL_CONFIGS = {"vit_b32": "configs/clip/vit_b32.yaml", "vit_b16": "configs/clip/vit_b16.yaml"}
OPENAI_VOCAB = 49_408
SMOKE_OVERRIDES = ["model.embed_dim=16", "model.vision.image_size=32", "model.vision.patch_size=16",
                   "model.vision.width=32", "model.vision.layers=1", "model.vision.heads=2",
                   "model.text.context_length=16", "model.text.width=32", "model.text.layers=1", "model.text.heads=2"]
ALL_VARIANTS = ["zero2", "zero2+compile", "zero0", "zero0+compile", "torch", "torch+compile",
                "torch+compile_model", "open_clip", "open_clip+compile"]


def importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # a broken install counts as absent
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, size: int, repeats: int = 10) -> float:
    """Achieved bf16 FLOP/s of a square matmul: the ceiling MFU is measured against."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole process, Linux reports KiB


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


# --- the step of each variant ----------------------------------------------------------------------------------

def synthetic_batch(cfg, vocab: int, batch: int, device: torch.device) -> tuple:
    size, length = cfg.vision.image_size, cfg.text.context_length
    images = torch.randn(batch, 3, size, size, device=device)  # [B, 3, H, W]
    input_ids = torch.randint(4, vocab, (batch, length), device=device)  # [B, T]
    input_ids[:, -1] = 3  # end-of-text, where the text tower pools
    return images, input_ids, torch.ones_like(input_ids)


def mmtool_model(clip_cfg, vocab: int, compile_backend: str | None, whole: bool = False) -> torch.nn.Module:
    from stage1_clip.model import CLIP

    model = CLIP(clip_cfg.model, clip_cfg.loss, vocab)
    if compile_backend and whole:
        model.compile(backend=compile_backend)
    elif compile_backend:
        model.compile_towers(backend=compile_backend)
    return model


def torch_step_fn(clip_cfg, vocab: int, batch: int, device: torch.device, compile_backend: str | None,
                  whole: bool = False):
    """Plain torch loop: autocast bf16, fused AdamW where the device has it."""
    from stage1_clip.loss import ClipLoss

    model = mmtool_model(clip_cfg, vocab, compile_backend, whole).to(device)
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1,
                                  fused=True)
    images, input_ids, mask = synthetic_batch(clip_cfg.model, vocab, batch, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(images, input_ids, mask)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def engine_step_fn(zero_config: str, clip_cfg, vocab: int, batch: int, device: torch.device,
                   compile_backend: str | None):
    """mmtool's engine, as `mmtool pretrain-clip` builds it, with the given ZeRO stage + bf16 autocast."""
    from mmtool.engine import OptimSettings, TrainEngine
    from stage1_clip.loss import build_loss

    model = mmtool_model(clip_cfg, vocab, compile_backend)
    engine = TrainEngine(model, ROOT / "configs/deepspeed" / zero_config, batch, optim=OptimSettings(
        lr=1e-4, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6, grad_clip=1.0, warmup_steps=1, total_steps=10**6))
    loss_fn = build_loss("clip")
    inputs = tuple(t.to(engine.device) for t in synthetic_batch(clip_cfg.model, vocab, batch, device))

    def step():  # stage1_clip.train.train_step for one micro-batch, without importing the data stack
        outputs = engine(*inputs)
        engine.backward(loss_fn(outputs["image_features"], outputs["text_features"], outputs["logit_scale"]))
        engine.step()
    return step


def open_clip_step_fn(clip_cfg, vocab: int, batch: int, device: torch.device, compile_backend: str | None):
    """open_clip's own CLIP + ClipLoss with the same architecture (bench/vs_open_clip.py's config)."""
    import open_clip

    from vs_open_clip import open_clip_model_cfg

    model = open_clip.CLIP(**open_clip_model_cfg(clip_cfg, vocab)).to(device)
    if compile_backend:
        model = torch.compile(model, backend=compile_backend)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1,
                                  fused=True)
    images, input_ids, _ = synthetic_batch(clip_cfg.model, vocab, batch, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            image_features, text_features, logit_scale = model(images, input_ids)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def build_step(variant: str, clip_cfg, vocab: int, batch: int, device: torch.device, backend: str):
    kind, _, compiled = variant.partition("+")
    builder = {"zero2": functools.partial(engine_step_fn, "zero2_bf16.json"),
               "zero0": functools.partial(engine_step_fn, "zero0_bf16.json"),
               "torch": torch_step_fn, "open_clip": open_clip_step_fn}[kind]
    if compiled == "compile_model":
        builder = functools.partial(builder, whole=True)
    return builder(clip_cfg, vocab, batch, device, backend if compiled else None)


def time_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


# --- batch search ----------------------------------------------------------------------------------------------

def step_fits(clip_cfg, vocab: int, batch: int, device: torch.device) -> bool:
    step = None
    try:
        step = torch_step_fn(clip_cfg, vocab, batch, device, None)
        step()
        step()
        synchronize(device)
        return True
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_oom(err):
            raise
        return False
    finally:
        del step
        free_memory(device)


def largest_batch(fits, start: int, limit: int, granularity: int) -> int:
    """Largest multiple of `granularity` in [start, limit] for which fits(batch) holds, assuming fits is monotone
    (doubling, then bisection); 0 when even `start` does not fit."""
    if not fits(start):
        return 0
    good, bad = start, None
    while bad is None and good < limit:
        trial = min(good * 2, limit)
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad is not None and bad - good > granularity:
        middle = (good + bad) // 2 // granularity * granularity
        if middle <= good:
            break
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


# --- main ------------------------------------------------------------------------------------------------------

def run_variant(variant: str, clip_cfg, vocab: int, batch: int, device: torch.device, args, peak: float) -> dict:
    for _ in range(3):
        step = None
        try:
            free_memory(device)
            step = build_step(variant, clip_cfg, vocab, batch, device, args.compile_backend)
            step_time = time_steps(step, device, args.warmup, args.steps)
            flops = train_step_flops(clip_cfg.model, batch)
            state = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            return {"batch": batch, "step_s": round(step_time, 4), "samples_per_s": round(batch / step_time, 1),
                    "peak_mem_GiB": round(peak_memory_bytes(device) / 2**30, 2), "state_GiB": round(state / 2**30, 2),
                    "TFLOP_per_step": round(flops / 1e12, 3), "MFU": f"{flops / step_time / peak:.1%}"}
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            batch = batch * 7 // 8 // args.batch_granularity * args.batch_granularity
            print(f"  {variant}: out of memory, retrying at batch {batch}", flush=True)
        finally:
            del step
            free_memory(device)
    return {"batch": batch, "note": "out of memory three times"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODEL_CONFIGS), choices=list(MODEL_CONFIGS))
    parser.add_argument("--variants", nargs="+", default=ALL_VARIANTS, choices=ALL_VARIANTS)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    parser.add_argument("--start-batch", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--batch-granularity", type=int, default=64)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--time-budget", type=float, default=480, help="seconds; later variants are skipped")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--cpu-smoke", action="store_true", help="toy model on the CPU: checks every code path")
    args = parser.parse_args()
    started = time.perf_counter()
    overrides = []
    if args.cpu_smoke:
        device = torch.device("cpu")
        overrides = SMOKE_OVERRIDES
        args.steps, args.warmup, args.start_batch, args.max_batch, args.batch_granularity = 2, 1, 2, 8, 2
        args.matmul_size, args.compile_backend, vocab = 256, "aot_eager", 300
    elif torch.cuda.is_available():
        device, vocab = torch.device("cuda", 0), OPENAI_VOCAB
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        sys.exit("no CUDA device: run with --cpu-smoke to check the script on the CPU")

    has_deepspeed, has_open_clip = importable("deepspeed"), importable("open_clip")
    variants = [v for v in args.variants if (has_deepspeed or not v.startswith("zero"))
                and (has_open_clip or not v.startswith("open_clip"))]
    if not has_deepspeed and not any(v.startswith("torch") for v in variants):
        variants = ["torch", "torch+compile", *variants]  # the plain-torch fallback stands in for ZeRO-2
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run, numbers meaningless)"
    print(f"{card} | torch {torch.__version__} | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
          f" | DeepSpeed {'importable' if has_deepspeed else 'NOT importable: plain torch instead of ZeRO-2'}"
          f" | open_clip {'importable' if has_open_clip else 'not importable: skipped'}", flush=True)
    peak = matmul_peak_flops(device, args.matmul_size)
    print(f"bf16 matmul {args.matmul_size}^3: {peak / 1e12:.1f} TFLOP/s (the MFU denominator)", flush=True)
    if has_deepspeed:
        from mmtool import distributed

        distributed.init_distributed()  # one process group for every ZeRO-2 engine of the run

    from mmtool.config import load_config
    from stage1_clip.config import ClipConfig

    rows = []
    for model_key in args.models:
        clip_cfg = load_config(ClipConfig, ROOT / MODEL_CONFIGS[model_key], overrides)
        batch = largest_batch(lambda b: step_fits(clip_cfg, vocab, b, device), args.start_batch, args.max_batch,
                              args.batch_granularity)
        print(f"{model_key}: largest batch {batch} (plain torch step, bf16 autocast)", flush=True)
        if not batch:
            continue
        for variant in variants:
            if time.perf_counter() - started > args.time_budget:
                rows.append({"model": model_key, "variant": variant, "note": "skipped: --time-budget spent"})
                continue
            row = {"model": model_key, "variant": variant,
                   **run_variant(variant, clip_cfg, vocab, batch, device, args, peak)}
            rows.append(row)
            print(f"  {json.dumps(row)}", flush=True)

    header = ["model", "variant", "batch", "step_s", "samples_per_s", "peak_mem_GiB", "state_GiB", "TFLOP_per_step",
              "MFU", "note"]
    print(f"\n{card}, {args.warmup} warm-up + {args.steps} timed steps, peak {peak / 1e12:.1f} TFLOP/s bf16 measured, "
          f"{time.perf_counter() - started:.0f} s in all")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row.get(h, "")) for h in header) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"card": card, "peak_flops": peak, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
