"""The stage-1 training loop: contrastive pretraining of the CLIP towers on webdataset shards."""
import json
import time
from pathlib import Path

import torch

from mmtool import distributed
from mmtool.config import to_dict
from mmtool.data.images import AugmentConfig
from mmtool.data.loader import make_eval_set, make_train_loader, resolve_shards, sample_count
from mmtool.engine import OptimSettings, TrainEngine
from mmtool.errors import MmtoolError
from mmtool.run_log import RunLog
from mmtool.train_cadence import Cadence
from mmtool.train_state import load_latest_state, save_rotating_state
from stage1_clip.bundle import save_clip
from stage1_clip.config import ClipConfig
from stage1_clip.evaluate import evaluate_clip
from stage1_clip.grad_cache import LOSS_INPUTS, cached_step
from stage1_clip.hard_negatives import HardNegatives
from stage1_clip.loss import build_loss
from stage1_clip.tiled_loss import build_tiled_loss
from stage1_clip.model import CLIP
from stage1_clip.tokenizer_setup import prepare_tokenizer



def pretrain_clip(cfg: ClipConfig, out: Path, resume: bool = False) -> dict:
    """Trains, evaluates and writes out/clip.pt; returns the last evaluation metrics."""
    distributed.init_distributed()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = distributed.rank(), distributed.world_size()

    try:
        loss_fn = (build_tiled_loss(cfg.loss.type, cfg.loss.tile_size) if cfg.loss.tile_size
                   else build_loss(cfg.loss.type))
    except ValueError as err:
        raise MmtoolError(f"loss: {err}") from None
    train_urls = resolve_shards(cfg.data.train)
    samples = cfg.data.train_samples or sample_count(train_urls)
    accum = cfg.train.accum_steps
    if accum < 1:
        raise MmtoolError(f"train.accum_steps must be >= 1, got {accum}")
    steps_per_epoch = samples // (cfg.data.batch_size * accum * world)
    if steps_per_epoch == 0:
        raise MmtoolError(f"data.batch_size {cfg.data.batch_size} x train.accum_steps {accum} x {world} ranks "
                          f"exceeds the {samples} training samples")
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    eval_set = (make_eval_set(resolve_shards(cfg.data.val), cfg.model.vision.image_size, cfg.data.label_fields)
                if cfg.data.val else None)

    tokenizer = prepare_tokenizer(cfg, train_urls, out)
    model = CLIP(cfg.model, cfg.loss, getattr(tokenizer, "vocab_size", None))
    if cfg.train.compile:
        model.compile_towers()
    engine = TrainEngine(model, cfg.train.deepspeed, cfg.data.batch_size, accum_steps=accum, optim=OptimSettings(
        lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, betas=tuple(cfg.train.betas), eps=cfg.train.eps,
        grad_clip=cfg.train.grad_clip, warmup_steps=cfg.train.warmup_steps, total_steps=total_steps,
        min_lr_ratio=cfg.train.min_lr_ratio, rules=cfg.train.param_groups, kernel=cfg.train.optimizer_kernel))

    mining = HardNegatives.from_config(cfg, train_urls, tokenizer, steps_per_epoch * accum)
    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if resume:
        client_state = load_latest_state(engine, out)
        progress.update(client_state["progress"])
        if mining:
            mining.load_state(client_state.get("hard_negatives"))
    if distributed.is_main():
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    log = RunLog(out, total_steps, progress["step"], enabled=distributed.is_main())
    log.message(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on "
                f"{samples} samples x {world} rank(s): {steps_per_epoch} steps/epoch, {total_steps} steps")

    def checkpoint() -> None:
        save_rotating_state(engine, out, progress["step"],
                            {"progress": dict(progress), "hard_negatives": mining.state() if mining else None},
                            cfg.train.keep_states)

    def run_eval() -> dict:
        if eval_set is None:
            return {}
        metrics = evaluate_clip(engine.module, lambda texts: tokenizer(texts, cfg.model.text.context_length),
                                eval_set, cfg.eval.templates, cfg.eval.batch_size)
        log.write(progress["step"], "val", metrics)
        log.message(format_metrics(progress["step"], metrics))
        return metrics

    augment = AugmentConfig(random_resized_crop_scale=tuple(cfg.data.random_resized_crop_scale),
                            style=cfg.data.augment)
    cadence = Cadence(cfg.train.save_every, cfg.train.eval_every, checkpoint, run_eval)
    shown = {}
    skipped_total, window_start, window_samples = 0, time.perf_counter(), 0

    def refresh_hard_negatives() -> bool:
        """Re-mines when due; True when the rest of the epoch's batches changed (the loader must restart)."""
        if not (mining and mining.refresh_due(progress["step"]) and progress["step"] < total_steps):
            return False
        started = time.perf_counter()
        changed = mining.refresh(engine.module, progress["step"], progress["epoch"],
                                 progress["batch_in_epoch"] * accum)
        log.message(f"hard negatives refreshed at step {progress['step']} in {time.perf_counter() - started:.1f} s")
        return changed

    engine.train()
    refresh_hard_negatives()
    while progress["step"] < total_steps:
        loader = mining.loader(progress["epoch"], progress["batch_in_epoch"] * accum, augment) if mining else None
        loader = loader if loader is not None else make_train_loader(
            train_urls, batch_size=cfg.data.batch_size, image_size=cfg.model.vision.image_size,
            epoch=progress["epoch"], seed=cfg.train.seed, rank=rank, world_size=world, workers=cfg.data.workers,
            batches_per_epoch=steps_per_epoch * accum, skip_batches=progress["batch_in_epoch"] * accum,
            shuffle_buffer=cfg.data.shuffle_buffer, augment=augment, resampled=cfg.data.resampled)
        pending = []
        for batch in loader:
            input_ids, attention_mask = tokenizer(batch["caption"], cfg.model.text.context_length)
            negatives = mining.negative_tokens(batch["key"], progress["step"]) if mining else None
            pending.append((batch["image"].to(engine.device, engine.param_dtype), input_ids.to(engine.device),
                            attention_mask.to(engine.device), *(t.to(engine.device) for t in negatives or ())))
            skipped_total += sum(batch.get("skipped", {}).values())
            window_samples += len(batch["caption"]) * world
            if len(pending) < accum:
                continue
            loss, temperature = train_step(engine, loss_fn, pending)
            pending = []
            progress["step"] += 1
            progress["batch_in_epoch"] += 1
            restart_loader = refresh_hard_negatives()

            if progress["step"] % cfg.train.log_every == 0 or progress["step"] == total_steps:
                elapsed = time.perf_counter() - window_start
                stats = {"loss": distributed.mean_over_ranks(loss), "lr": engine.current_lr(),
                         "temperature": temperature,
                         "samples_per_s": window_samples / elapsed, "skipped_samples": skipped_total}
                log.write(progress["step"], "train", stats)
                shown = {"loss": stats["loss"], "lr": stats["lr"], "temp": stats["temperature"],
                         "samples/s": stats["samples_per_s"]}
                window_start, window_samples = time.perf_counter(), 0
            log.progress(1, **shown)
            cadence.after_step(progress["step"])
            if progress["step"] >= total_steps or restart_loader:
                break
        else:
            progress["epoch"] += 1
            progress["batch_in_epoch"] = 0
            cadence.after_epoch(progress["step"])

    metrics = cadence.finish(progress["step"])
    state_dict = engine.full_state_dict()
    if distributed.is_main():
        save_clip(out / "clip.pt", cfg, state_dict, tokenizer, engine.module)
        if metrics:
            (out / "eval.json").write_text(json.dumps(metrics, indent=2))
        log.message(f"wrote {out / 'clip.pt'}")
    log.close()
    distributed.barrier()
    return metrics


def train_step(engine: TrainEngine, loss_fn, micro_batches: list[tuple]) -> tuple[torch.Tensor, float]:
    """One optimizer step; returns the (rank-local) loss and the temperature it used."""
    if len(micro_batches) > 1:
        loss, logit_scale = cached_step(engine, loss_fn, micro_batches)
    else:
        outputs = engine(*micro_batches[0])
        negatives = {k: v for k, v in outputs.items() if k == "negative_text_features"}  # mined captions
        loss = loss_fn(*(outputs[name] for name in LOSS_INPUTS), **negatives)
        engine.backward(loss)
        engine.step()
        logit_scale = outputs["logit_scale"]
    return loss, 1.0 / logit_scale.item()


def format_metrics(step: int, metrics: dict) -> str:
    shown = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    return f"[eval step {step}] {shown}"
