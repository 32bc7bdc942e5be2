"""Where a stage-2 (align) and a stage-3 (finetune) step's time goes, and how many tokens the LLM sees.

Times one optimizer step split into its parts (image tower forward, projector, LLM forward with the answer loss,
backward, AdamW) on real batches: the caption shards for stage 2, instruction conversations for stage 3 (built
from the first shard when --conversations is not given). bf16 autocast over fp32 weights and a torch AdamW, as
configs/deepspeed/zero2_bf16.json trains (DeepSpeed itself adds no compute on one rank); `--precision fp32` as it
trains where bf16 is emulated (mmtool/cpu_features.py).

Layouts, run in turn on the same batches: `before` (commit 6f6a092: right-padded rows, the output layer on every
position), `padded` (only positions that predict an answer token reach the output layer), `packed` (a micro-batch
in one row, the shared template prefix once: stage2_projector/packing.py); features `live` (the frozen tower runs
every step) or `cached` (read back). Times are process CPU seconds (both threads), so other jobs on the machine
inflate them less than wall time.

    OMP_NUM_THREADS=1 flock /tmp/mmtool-cpu.lock .venv/bin/python bench/stage23_step.py --llm llama
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtool.config import load_config  # noqa: E402
from mmtool.data.reading.images import AugmentConfig, eval_transform, normalize_pixels  # noqa: E402
from mmtool.data.reading.loader import make_train_loader, resolve_shards  # noqa: E402
from stage2_projector.chat_format import IGNORE_INDEX  # noqa: E402
from stage2_projector.checkpoint import build_vlm  # noqa: E402
from stage2_projector.config import AlignConfig  # noqa: E402
from stage2_projector.data import caption_turns, encode_caption_batch, pick_instruction  # noqa: E402
from stage2_projector.llm import IMAGE_TOKEN  # noqa: E402
from stage2_projector.packing import batch_tokens, pack_batch  # noqa: E402
from stage3_llm.checkpoint import add_lora  # noqa: E402
from stage3_llm.config import LoraSettings  # noqa: E402
from stage3_llm.conversations import ConversationDataset, collate_conversations, read_conversations  # noqa: E402

PARTS = ("tower", "projector", "llm_forward", "backward", "optimizer")


def untrained_default_clip(path: Path) -> Path:
    """configs/clip/default.yaml's towers (pretrained EfficientNet-Lite0 + MiniLM), projections untrained."""
    from stage1_clip.checkpoint import save_clip
    from stage1_clip.config import ClipConfig
    from stage1_clip.model import CLIP
    from stage1_clip.tokenizer_setup import prepare_tokenizer

    cfg = load_config(ClipConfig, "configs/clip/default.yaml")
    tokenizer = prepare_tokenizer(cfg, [], path.parent)
    model = CLIP(cfg.model, cfg.loss, getattr(tokenizer, "vocab_size", None))
    save_clip(path, cfg, model.state_dict(), tokenizer, model)
    return path


def content_tokens(tokenizer, turns: list[dict], num_image_tokens: int) -> int:
    """Tokens of the turns' own text and images; the rest of a sample is what the chat template adds (system
    prompt, role headers, end markers)."""
    content = 0
    for turn in turns:
        text = turn["content"]
        content += text.count(IMAGE_TOKEN) * num_image_tokens
        content += sum(len(tokenizer(piece, add_special_tokens=False)["input_ids"])
                       for piece in text.split(IMAGE_TOKEN) if piece)
    return content


def token_stats(batch: dict, template: int, samples: int) -> dict:
    """Tokens the LLM runs, the share of them that is padding, and the share of the samples' own tokens (each
    sample counted whole) that the chat template adds."""
    rows, length = batch["input_ids"].shape
    real = batch_tokens(batch)
    return {"tokens": rows * length, "padding": 1 - real / (rows * length), "template": template / samples}


class Clock:
    """Wall and process CPU seconds (all threads) of each part of a step."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def part(self, name: str, run):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        self.wall[name], self.cpu[name] = time.perf_counter() - wall, time.process_time() - cpu
        return result


def full_logits_loss(model, embeds: torch.Tensor, batch: dict) -> torch.Tensor:
    """The loss as stages 2-3 computed it before (commit 6f6a092): logits of every position, then the mask."""
    logits = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False).logits
    targets = batch["labels"][:, 1:]  # [B, T-1]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum") / (targets != IGNORE_INDEX).sum()


def timed_step(model, optimizer, batch: dict, features, all_logits: bool = False, bf16: bool = True) -> Clock:
    """One step in parts; `features` [B, N, C] skips the tower (cached), None runs it on the batch's pixels;
    `all_logits` computes the loss as before; `bf16`: under bf16 autocast, else fp32."""
    clock = Clock()

    def tower():
        with torch.no_grad():
            return model.vision(batch["pixel_values"]) if features is None else features  # [B, N, C]

    def llm_forward(image_embeds):
        embeds = model.llm.get_input_embeddings()(batch["input_ids"])  # [R, T, D]
        is_image = (batch["input_ids"] == model.image_token_id).unsqueeze(-1)  # [R, T, 1]
        embeds = embeds.masked_scatter(is_image, image_embeds.to(embeds.dtype))
        if all_logits:
            return full_logits_loss(model, embeds, batch)
        return model.run_llm(embeds, batch["attention_mask"], batch["labels"], batch.get("position_ids"))["loss"]

    def optimizer_step():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tower_features = clock.part("tower", tower)
        image_embeds = clock.part("projector", lambda: model.projector(tower_features.float()))  # [B, N, D]
        loss = clock.part("llm_forward", lambda: llm_forward(image_embeds))
    clock.part("backward", loss.backward)
    clock.part("optimizer", optimizer_step)
    return clock


def stage2_batches(bundle, shards: str, batch_size: int, count: int, cfg: AlignConfig) -> list[dict]:
    loader = make_train_loader(resolve_shards(shards), batch_size=batch_size,
                               image_size=bundle.record["vision"]["image_size"], epoch=0, seed=0, rank=0,
                               world_size=1, workers=0, batches_per_epoch=count,
                               augment=AugmentConfig(random_resized_crop_scale=(1.0, 1.0)))
    out = []
    for raw in loader:
        batch = encode_caption_batch(bundle.tokenizer, raw["caption"], raw["key"], cfg.data.instructions,
                                     bundle.num_image_tokens, cfg.data.max_length)
        own = sum(content_tokens(bundle.tokenizer, caption_turns(c, pick_instruction(cfg.data.instructions, k)),
                                 bundle.num_image_tokens) for c, k in zip(raw["caption"], raw["key"]))
        real = int(batch["attention_mask"].sum())
        out.append({**batch, "pixel_values": normalize_pixels(raw["image"]), "template": real - own,
                    "sample_tokens": real})
    return out


def stage3_batches(bundle, conversations: Path, batch_size: int, count: int) -> list[dict]:
    records, source = read_conversations(conversations)
    records = records[:batch_size * count * 7:7]  # every 7th: a mix of the five tasks
    size = bundle.record["vision"]["image_size"]
    dataset = ConversationDataset(records, source, bundle.tokenizer, IMAGE_TOKEN, bundle.num_image_tokens,
                                  lambda img: eval_transform(img, size), max_length=192)
    out = []
    for start in range(0, batch_size * count, batch_size):
        indices = range(start, start + batch_size)
        batch = collate_conversations([dataset[i] for i in indices], bundle.tokenizer.pad_token_id)
        own = sum(content_tokens(bundle.tokenizer, records[i].turns, bundle.num_image_tokens) for i in indices)
        real = int(batch["attention_mask"].sum())
        out.append({**batch, "template": real - own, "sample_tokens": real})
    return out


def to_packed(batch: dict, image_token_id: int) -> dict:
    rows = [(ids[mask.bool()].tolist(), labels[mask.bool()].tolist())
            for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"])]
    return {**pack_batch(rows, image_token_id), "pixel_values": batch["pixel_values"], "template": batch["template"],
            "sample_tokens": batch["sample_tokens"]}


def measure(stage: str, model, batches: list[dict], warmup: int, bf16: bool = True) -> list[dict]:
    """The three layouts in turn on the same batches, step by step, so load from other jobs hits them alike."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        cached = [model.vision(b["pixel_values"]) for b in batches]  # [B, N, C] each
    packed = [to_packed(b, model.image_token_id) for b in batches]
    live = [None] * len(batches)
    layouts = {"before: padded, live tower, all logits": (batches, live, True),
               "padded, live tower": (batches, live, False), "packed, live tower": (packed, live, False),
               "packed, cached features": (packed, cached, False)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    clocks = {name: [] for name in layouts}
    for index in range(len(batches)):
        for name, (layout, features, all_logits) in layouts.items():
            clock = timed_step(model, optimizer, layout[index], features[index], all_logits, bf16)
            if index >= warmup:
                clocks[name].append(clock)
    samples = batches[0]["input_ids"].shape[0]
    results = []
    for name, (layout, _, _) in layouts.items():
        stats = [token_stats(b, b["template"], b["sample_tokens"]) for b in layout[warmup:]]
        result = {"stage": stage, "layout": name, "steps": len(clocks[name]), "precision": "bf16" if bf16 else "fp32"}
        result.update({part: statistics.median(c.cpu[part] for c in clocks[name]) for part in PARTS})
        result["cpu_s"] = sum(result[part] for part in PARTS)
        result["wall_s"] = statistics.median(sum(c.wall.values()) for c in clocks[name])
        result.update(samples_per_cpu_s=samples / result["cpu_s"],
                      tokens=statistics.mean(s["tokens"] for s in stats),
                      padding=statistics.mean(s["padding"] for s in stats),
                      template=statistics.mean(s["template"] for s in stats))
        results.append(result)
        print(json.dumps(result), flush=True)
    return results


def print_table(results: list[dict]) -> None:
    print("\nCPU seconds per step (median over steps; process time, both threads) by part; wall s for reference")
    print("| stage | layout | tower | projector | LLM fwd | backward | optimizer | step CPU s | step wall s "
          "| samples / CPU s | tokens run | padding | template share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['stage']}, {r['precision']} | {r['layout']} | {r['tower']:.3f} | {r['projector']:.3f} "
              f"| {r['llm_forward']:.2f} | {r['backward']:.2f} | {r['optimizer']:.3f} "
              f"| {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {r['samples_per_cpu_s']:.2f} "
              f"| {r['tokens']:.0f} | {r['padding']:.0%} | {r['template']:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="llama")
    parser.add_argument("--vision", help="a stage-1 clip.pt (default: an untrained configs/clip/default.yaml CLIP)")
    parser.add_argument("--shards", default="data/folds/twemoji/train-*.tar")
    parser.add_argument("--conversations", help="LLaVA JSON (default: built from the first train shard)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--lora-dropout", type=float, default=LoraSettings.dropout,
                        help="stage 3's LoRA dropout (the recipe's default: 0; 0.05 before session 10)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (the bf16 configs) or fp32 (what they fall back to where bf16 is emulated)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    with tempfile.TemporaryDirectory(prefix="stage23_bench_") as work:  # the stand-in CLIP and conversations
        print_table(run(args, Path(work)))


def run(args, work: Path) -> list[dict]:
    vision = Path(args.vision) if args.vision else untrained_default_clip(work / "clip.pt")
    cfg = load_config(AlignConfig, "configs/align/emoji.yaml")
    cfg = replace(cfg, model=replace(cfg.model, vision=str(vision), llm=args.llm))
    start = time.perf_counter()
    bundle = build_vlm(cfg, vision)
    print(f"built the model in {time.perf_counter() - start:.0f} s; {bundle.num_image_tokens} image tokens",
          flush=True)
    count = args.steps + args.warmup
    results = []
    if "2" in args.stages.split(","):
        bundle.model.llm.requires_grad_(False)
        bundle.model.vision.requires_grad_(False)
        bundle.model.train()
        results += measure("align (batch 16)", bundle.model, stage2_batches(bundle, args.shards, 16, count, cfg),
                           args.warmup, args.precision == "bf16")
    if "3" in args.stages.split(","):
        conversations = Path(args.conversations) if args.conversations else build_conversations(args.shards, work)
        batches = stage3_batches(bundle, conversations, 8, count)
        add_lora(bundle, LoraSettings(dropout=args.lora_dropout))
        bundle.model.vision.requires_grad_(False)
        bundle.model.train()
        results += measure("finetune (batch 8)", bundle.model, batches, args.warmup, args.precision == "bf16")
    return results


def build_conversations(shards: str, work: Path) -> Path:
    from mmtool.data.building.instructions import build_instructions

    build_instructions(resolve_shards(shards)[0], work / "instruct")
    return next((work / "instruct").glob("*.json"))


if __name__ == "__main__":
    main()
