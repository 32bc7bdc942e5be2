"""Expected per-GPU memory of CLIP training by model, batch per GPU, ZeRO stage and GPU count (computed, not measured
on a GPU). The table in docs/scaling.md comes from this script.

    flock /tmp/mmtool-cpu.lock .venv/bin/python bench/memory_plan.py          # ~1 min on 2 CPU cores

Model states (mmtool's recipe: fp32 weights, bf16 autocast, AdamW; P parameters, N data-parallel GPUs):
    fp32 weights 4P, fp32 gradients 4P, AdamW moments 8P, bf16 weight copies 2P (autocast's per-step cast cache)
    ZeRO-1 shards the moments, ZeRO-2 also the gradients, ZeRO-3 also the weights (and gathers bf16 copies per layer).
Activations: the bytes autograd saves for the backward, counted with saved_tensors_hooks during a real bf16-autocast
forward on the CPU (distinct storages), per sample as the difference between batch 4 and batch 2 (so weights and their
bf16 casts cancel). CUDA's flash/efficient SDPA saves the same q, k, v, output and log-sum-exp as the CPU kernel.
With gradient checkpointing (vit_l14's image tower) only each block's fp32 input stays, plus one block recomputed.
Left out: the CUDA context and allocator slack (budget 1-3 GiB), DeepSpeed's communication buckets
(reduce_bucket_size / allgather_bucket_size elements), the B x global-batch logits (under 0.2 GiB at a global
batch of 32k with 512 per GPU).
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["vit_b32", "vit_b16", "vit_l14"]
BATCHES = [256, 512]
GPU_COUNTS = [8, 64]
VOCAB = 49_408
GiB = 2 ** 30


def saved_bytes(model, batch: int, cfg) -> tuple[int, int]:
    """Bytes saved for backward while the image tower / the text tower + loss run; weights and their bf16 casts
    are included here and cancel in the batch 4 - batch 2 difference."""
    from stage1_clip.loss import ClipLoss

    storages = {"vision": {}, "text": {}}  # tower -> {storage address: bytes}
    current = ["vision"]

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[current[0]][storage.data_ptr()] = storage.nbytes()
        return tensor

    size, length = cfg.vision.image_size, cfg.text.context_length
    images = torch.randn(batch, 3, size, size)
    tokens = torch.randint(4, VOCAB, (batch, length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        image_features = model.encode_image(images)
        current[0] = "text"
        text_features = model.encode_text(tokens, torch.ones_like(tokens))
        ClipLoss()(image_features, text_features, model.temperature_scale())
    return sum(storages["vision"].values()), sum(storages["text"].values())


def per_sample_activations(name: str) -> tuple[float, float, object, int]:
    """(image-tower bytes per sample, text-tower bytes per sample, model config, parameters)."""
    from mmtool.config import load_config
    from stage1_clip.config import ClipConfig
    from stage1_clip.model import CLIP

    cfg = load_config(ClipConfig, ROOT / f"configs/clip/{name}.yaml",
                      ["model.vision.grad_checkpointing=false", "model.text.grad_checkpointing=false"])
    torch.manual_seed(0)
    model = CLIP(cfg.model, cfg.loss, VOCAB)
    small, large = saved_bytes(model, 2, cfg.model), saved_bytes(model, 4, cfg.model)
    params = sum(p.numel() for p in model.parameters())
    shipped = load_config(ClipConfig, ROOT / f"configs/clip/{name}.yaml").model  # with its checkpointing switches
    return (large[0] - small[0]) / 2, (large[1] - small[1]) / 2, shipped, params


def model_state_bytes(params: int, stage: int, gpus: int) -> float:
    weights = 4 * params / (gpus if stage >= 3 else 1)
    grads = 4 * params / (gpus if stage >= 2 else 1)
    moments = 8 * params / (gpus if stage >= 1 else 1)
    casts = 2 * params if stage < 3 else 0  # ZeRO-3 casts each layer's gathered weights as it runs
    return weights + grads + moments + casts


def main() -> None:
    rows = []
    for name in MODELS:
        vision_bytes, text_bytes, cfg, params = per_sample_activations(name)
        if cfg.vision.grad_checkpointing:  # keep block inputs (fp32) + one block's activations during recompute
            print(f"{name}: image tower without checkpointing {vision_bytes / 2**20:.1f} MiB per sample")
            tokens = (cfg.vision.image_size // cfg.vision.patch_size) ** 2 + 1
            vision_bytes = cfg.vision.layers * 4 * tokens * cfg.vision.width + vision_bytes / cfg.vision.layers
        per_sample = vision_bytes + text_bytes
        print(f"{name}: {params:,} parameters; activations {vision_bytes / 2**20:.1f} MiB (image) + "
              f"{text_bytes / 2**20:.1f} MiB (text) per sample"
              + (" with image-tower gradient checkpointing" if cfg.vision.grad_checkpointing else ""), flush=True)
        for batch in BATCHES:
            row = {"model": name, "params_M": f"{params / 1e6:.1f}", "batch/GPU": batch,
                   "activations_GiB": f"{per_sample * batch / GiB:.1f}"}
            for stage in (0, 1, 2, 3):
                for gpus in GPU_COUNTS:
                    total = model_state_bytes(params, stage, gpus) + per_sample * batch
                    row[f"ZeRO-{stage} N={gpus}"] = f"{total / GiB:.1f}"
            rows.append(row)
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")


if __name__ == "__main__":
    main()
