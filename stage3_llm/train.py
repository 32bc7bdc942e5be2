"""The stage-3 loop: instruction-tune an aligned model on LLaVA conversations (LoRA + projector, or full)."""
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mmtool import distributed
from mmtool.checkpoint import file_sha256
from mmtool.config import to_dict
from mmtool.data.images import eval_transform
from mmtool.engine import OptimSettings, TrainEngine
from mmtool.errors import MmtoolError
from mmtool.run_log import RunLog
from mmtool.train_cadence import Cadence
from mmtool.train_state import load_latest_state, save_rotating_state
from stage2_projector.bundle import MODEL_FILE, VlmBundle, resolve_model_file
from stage3_llm.bundle import add_lora, load_finetuned, save_finetuned
from stage3_llm.config import FinetuneConfig
from stage3_llm.conversations import ConversationDataset, collate_conversations, read_conversations



def finetune(cfg: FinetuneConfig, out: Path, resume: bool = False) -> dict:
    """Trains on cfg.data.train and writes out/vlm.pt (+ out/adapter/); returns the last val metrics."""
    distributed.init_distributed()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)  # LoRA's initial weights: the same on every rank
    if not cfg.model.base:
        raise MmtoolError("model.base: give the aligned checkpoint (--model ckpt/align)")
    base_file = resolve_model_file(cfg.model.base)
    if not base_file.is_file():
        raise MmtoolError(f"--model {cfg.model.base}: no {base_file.name} there (run mmtool align first)")
    base_sha = file_sha256(base_file)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        check_resume_base(out, base_sha)
    bundle = load_finetuned(base_file, cfg.model.llm, trainable=cfg.model.lora.enabled)
    continues_adapter = bool(bundle.record.get("finetune", {}).get("lora"))  # keep training its adapter
    if cfg.model.lora.enabled and not continues_adapter:
        add_lora(bundle, cfg.model.lora)
    if not cfg.model.lora.enabled and continues_adapter:
        raise MmtoolError(f"--model {cfg.model.base} carries a LoRA adapter: keep model.lora.enabled true, or "
                          "export a merged model for full fine-tuning")
    record = {**bundle.record, "finetune": {"config": to_dict(cfg), "base": str(base_file), "base_sha256": base_sha,
                                            "lora": cfg.model.lora.enabled}}
    train_set, val_set = make_datasets(cfg, bundle)
    return train_loop(cfg, out, bundle, record, train_set, val_set, resume)


def check_resume_base(out: Path, base_sha: str) -> None:
    """--resume continues only from the checkpoint the run started from."""
    started = out / "config.json"
    if started.is_file():
        recorded = json.loads(started.read_text()).get("base_sha256")
        if recorded and recorded != base_sha:
            raise MmtoolError(f"--resume: {out} was started from another --model (sha256 {recorded[:12]}, "
                              f"now {base_sha[:12]})")


def make_datasets(cfg: FinetuneConfig, bundle: VlmBundle):
    image_size = bundle.record["vision"]["image_size"]
    encode = partial(ConversationDataset, tokenizer=bundle.tokenizer, image_token=bundle.llm.identity["image_token"],
                     num_image_tokens=bundle.num_image_tokens, image_transform=lambda img: eval_transform(img, image_size),
                     max_length=cfg.data.max_length)
    conversations, source = read_conversations(cfg.data.train, cfg.data.image_folder, cfg.data.image_shards)
    if cfg.data.max_samples is not None and cfg.data.max_samples < len(conversations):
        keep = np.random.default_rng(cfg.train.seed).permutation(len(conversations))[:cfg.data.max_samples]
        conversations = [conversations[i] for i in sorted(keep)]
    train_set = encode(conversations, source)
    val_set = None
    if cfg.data.val:
        val_conversations, val_source = read_conversations(cfg.data.val, cfg.data.image_folder, cfg.data.image_shards)
        val_set = encode(val_conversations[:cfg.data.val_samples], val_source)
    return train_set, val_set


def train_loop(cfg: FinetuneConfig, out: Path, bundle: VlmBundle, record: dict, train_set, val_set,
               resume: bool) -> dict:
    rank, world = distributed.rank(), distributed.world_size()
    accum = cfg.train.accum_steps
    steps_per_epoch = len(train_set) // (cfg.data.batch_size * accum * world)
    if accum < 1 or steps_per_epoch == 0:
        raise MmtoolError(f"data.batch_size {cfg.data.batch_size} x train.accum_steps {accum} x {world} ranks "
                          f"does not fit the {len(train_set)} training conversations")
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    # Built whole on every rank before DeepSpeed sees it: ZeRO-3 partitions already-loaded weights.
    engine = TrainEngine(bundle.model, cfg.train.deepspeed, cfg.data.batch_size, accum_steps=accum,
                         optim=OptimSettings(lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                             betas=tuple(cfg.train.betas), eps=cfg.train.eps,
                                             grad_clip=cfg.train.grad_clip, warmup_steps=cfg.train.warmup_steps,
                                             total_steps=total_steps, min_lr_ratio=cfg.train.min_lr_ratio,
                                             rules=cfg.train.param_groups))
    collate = partial(collate_conversations, pad_id=bundle.tokenizer.pad_token_id)
    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if resume:
        progress.update(load_latest_state(engine, out)["progress"])
    if distributed.is_main():
        (out / "config.json").write_text(json.dumps({**to_dict(cfg), "base_sha256": record["finetune"]["base_sha256"]},
                                                    indent=2))
    trainable = sum(p.numel() for p in bundle.model.parameters() if p.requires_grad)
    log = RunLog(out, total_steps, progress["step"], enabled=distributed.is_main())
    log.message(f"training {trainable / 1e6:.3f}M of {sum(p.numel() for p in bundle.model.parameters()) / 1e6:.1f}M "
                f"parameters on {len(train_set)} conversations x {world} rank(s): {steps_per_epoch} steps/epoch, "
                f"{total_steps} steps")

    def run_eval() -> dict:
        if val_set is None:
            return {}
        metrics = answer_loss(engine, val_set, collate, cfg.data.batch_size)
        log.write(progress["step"], "val", metrics)
        log.message(f"[eval step {progress['step']}] " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return metrics

    def checkpoint() -> None:
        save_rotating_state(engine, out, progress["step"], {"progress": dict(progress)}, cfg.train.keep_states)

    cadence = Cadence(cfg.train.save_every, cfg.train.eval_every, checkpoint, run_eval)
    shown = {}
    if progress["step"] == 0:
        cadence.evaluate(progress["step"])  # the loss before any update, for the record
    window_start, window_samples = time.perf_counter(), 0
    engine.train()
    while progress["step"] < total_steps:
        batches = epoch_batches(len(train_set), cfg.data.batch_size, cfg.train.seed, progress["epoch"], rank, world,
                                steps_per_epoch * accum)
        for micro_step, indices in enumerate(batches[progress["batch_in_epoch"] * accum:], start=1):
            batch = collate([train_set[i] for i in indices])
            # Dropout (LoRA's too) draws from a generator seeded by the position in training, so a resumed run
            # repeats an uninterrupted one exactly (DeepSpeed states hold no RNG state).
            torch.manual_seed(cfg.train.seed * 1_000_003 + progress["step"] * accum + (micro_step - 1) % accum)
            outputs = engine(batch["input_ids"].to(engine.device), batch["attention_mask"].to(engine.device),
                             to_device(batch["pixel_values"], engine), batch["labels"].to(engine.device))
            engine.backward(outputs["loss"])
            engine.step()
            window_samples += len(indices) * world
            if micro_step % accum:
                continue
            progress["step"] += 1
            progress["batch_in_epoch"] += 1
            if progress["step"] % cfg.train.log_every == 0 or progress["step"] == total_steps:
                elapsed = time.perf_counter() - window_start
                stats = {"loss": distributed.mean_over_ranks(outputs["loss"].detach()), "lr": engine.current_lr(),
                         "samples_per_s": window_samples / elapsed}
                log.write(progress["step"], "train", stats)
                shown = {"loss": stats["loss"], "lr": stats["lr"], "samples/s": stats["samples_per_s"]}
                window_start, window_samples = time.perf_counter(), 0
            log.progress(1, **shown)
            cadence.after_step(progress["step"])
            if progress["step"] >= total_steps:
                break
        else:
            progress["epoch"] += 1
            progress["batch_in_epoch"] = 0
            cadence.after_epoch(progress["step"])

    metrics = cadence.finish(progress["step"])
    state_dict = engine.full_state_dict()  # every rank takes part: ZeRO-3 gathers the partitions
    if distributed.is_main():
        save_finetuned(out, record, state_dict, bundle.model.llm, cfg.model.lora.enabled)
        if metrics:
            (out / "eval.json").write_text(json.dumps(metrics, indent=2))
        log.message(f"wrote {out / MODEL_FILE}")
    log.close()
    distributed.barrier()
    return metrics


def epoch_batches(count: int, batch_size: int, seed: int, epoch: int, rank: int, world: int,
                  micro_batches: int) -> list[list[int]]:
    """This rank's micro-batches of an epoch: a seeded permutation, dealt round-robin to the ranks (the same list
    on every run, so resuming skips exactly the batches already trained on)."""
    order = np.random.default_rng([seed, epoch]).permutation(count)
    per_rank = order[rank::world]
    return [per_rank[i * batch_size:(i + 1) * batch_size].tolist() for i in range(micro_batches)]


def to_device(pixels: torch.Tensor | None, engine: TrainEngine) -> torch.Tensor | None:
    return None if pixels is None else pixels.to(engine.device, engine.param_dtype)


@torch.no_grad()
def answer_loss(engine: TrainEngine, dataset, collate, batch_size: int) -> dict:
    """Mean next-token loss over the answer tokens of `dataset`. Every rank runs every batch (ZeRO-3 gathers
    weights collectively), so the result is the same on all ranks."""
    engine.train(False)
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        outputs = engine(batch["input_ids"].to(engine.device), batch["attention_mask"].to(engine.device),
                         to_device(batch["pixel_values"], engine), batch["labels"].to(engine.device))
        loss_sum += outputs["loss_sum"].item()
        tokens += int(outputs["tokens"])
    engine.train(True)
    return {"answer_loss": loss_sum / max(tokens, 1), "answer_tokens": tokens, "conversations": len(dataset)}


