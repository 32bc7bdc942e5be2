"""The stage-2 loop: train the projector on caption pairs with the image tower and the LLM frozen."""
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
from stage2_projector.bundle import MODEL_FILE, VlmBundle, build_vlm, save_vlm
from stage2_projector.config import AlignConfig
from stage2_projector.data import encode_caption_batch


def align(cfg: AlignConfig, out: Path, resume: bool = False, bundle: VlmBundle | None = None) -> dict:
    """Trains the projector and writes out/vlm.pt; returns the last val metrics. `bundle` replaces building the
    model from cfg.model (tests pass a tiny one)."""
    distributed.init_distributed()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)  # the projector's initial weights: the same on every rank
    out.mkdir(parents=True, exist_ok=True)
    rank, world = distributed.rank(), distributed.world_size()
    if bundle is None:
        if not cfg.model.vision:
            raise MmtoolError("model.vision: give the stage-1 checkpoint (--vision ckpt/clip/clip.pt)")
        bundle = build_vlm(cfg, cfg.model.vision)
    image_size, num_image_tokens = bundle.record["vision"]["image_size"], bundle.num_image_tokens

    train_urls = resolve_shards(cfg.data.train)
    samples = cfg.data.train_samples or sample_count(train_urls)
    accum = cfg.train.accum_steps
    steps_per_epoch = samples // (cfg.data.batch_size * accum * world)
    if accum < 1 or steps_per_epoch == 0:
        raise MmtoolError(f"data.batch_size {cfg.data.batch_size} x train.accum_steps {accum} x {world} ranks "
                          f"does not fit the {samples} training samples")
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    val_set = make_val_set(cfg, image_size) if cfg.data.val else None

    # Built whole on every rank before DeepSpeed sees it: ZeRO-3 partitions already-loaded weights.
    engine = TrainEngine(bundle.model, cfg.train.deepspeed, cfg.data.batch_size, accum_steps=accum,
                         optim=OptimSettings(lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                             betas=tuple(cfg.train.betas), eps=cfg.train.eps,
                                             grad_clip=cfg.train.grad_clip, warmup_steps=cfg.train.warmup_steps,
                                             total_steps=total_steps, min_lr_ratio=cfg.train.min_lr_ratio,
                                             rules=cfg.train.param_groups))

    def encode(captions: list[str], keys: list[str]) -> dict[str, torch.Tensor]:
        batch = encode_caption_batch(bundle.tokenizer, captions, keys, cfg.data.instructions, num_image_tokens,
                                     cfg.data.max_length)
        return {name: tensor.to(engine.device) for name, tensor in batch.items()}

    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if resume:
        progress.update(load_latest_state(engine, out)["progress"])
    if distributed.is_main():
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    trainable = sum(p.numel() for p in bundle.model.parameters() if p.requires_grad)
    log = RunLog(out, total_steps, progress["step"], enabled=distributed.is_main())
    log.message(f"training {trainable / 1e6:.3f}M of {sum(p.numel() for p in bundle.model.parameters()) / 1e6:.1f}M "
                f"parameters on {samples} samples x {world} rank(s), {num_image_tokens} image tokens: "
                f"{steps_per_epoch} steps/epoch, {total_steps} steps")

    def run_eval() -> dict:
        if val_set is None:
            return {}
        engine.train(False)
        metrics = evaluate_answer_loss(engine, val_set, encode, cfg.data.batch_size, engine.param_dtype)
        engine.train(True)
        log.write(progress["step"], "val", metrics)
        log.message(f"[val step {progress['step']}] " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return metrics

    def checkpoint() -> None:
        save_rotating_state(engine, out, progress["step"], {"progress": dict(progress)}, cfg.train.keep_states)

    augment = AugmentConfig(random_resized_crop_scale=tuple(cfg.data.random_resized_crop_scale))
    cadence = Cadence(cfg.train.save_every, cfg.train.eval_every, checkpoint, run_eval)
    shown = {}
    window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
    if cfg.train.eval_at_start and progress["step"] == 0:
        cadence.evaluate(progress["step"])
    engine.train()
    while progress["step"] < total_steps:
        loader = make_train_loader(
            train_urls, batch_size=cfg.data.batch_size, image_size=image_size, epoch=progress["epoch"],
            seed=cfg.train.seed, rank=rank, world_size=world, workers=cfg.data.workers,
            batches_per_epoch=steps_per_epoch * accum, skip_batches=progress["batch_in_epoch"] * accum,
            shuffle_buffer=cfg.data.shuffle_buffer, augment=augment, resampled=cfg.data.resampled)
        for micro_step, batch in enumerate(loader, start=1):
            inputs = encode(batch["caption"], batch["key"])
            outputs = engine(inputs["input_ids"], inputs["attention_mask"],
                             batch["image"].to(engine.device, engine.param_dtype), inputs["labels"])
            engine.backward(outputs["loss"])
            engine.step()
            window_samples += len(batch["caption"]) * world
            window_tokens += int(inputs["attention_mask"].sum()) * world
            if micro_step % accum:
                continue
            progress["step"] += 1
            progress["batch_in_epoch"] += 1
            if progress["step"] % cfg.train.log_every == 0 or progress["step"] == total_steps:
                elapsed = time.perf_counter() - window_start
                stats = {"loss": distributed.mean_over_ranks(outputs["loss"].detach()), "lr": engine.current_lr(),
                         "samples_per_s": window_samples / elapsed, "tokens_per_s": window_tokens / elapsed}
                log.write(progress["step"], "train", stats)
                shown = {"loss": stats["loss"], "lr": stats["lr"], "samples/s": stats["samples_per_s"]}
                window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
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
        save_vlm(out / MODEL_FILE, bundle.record, state_dict)
        if metrics:
            (out / "eval.json").write_text(json.dumps(metrics, indent=2))
        log.message(f"wrote {out / MODEL_FILE}")
    log.close()
    distributed.barrier()
    return metrics


def make_val_set(cfg: AlignConfig, image_size: int) -> dict:
    """The first data.val_samples val samples (canonical captions), eval-transformed."""
    val = make_eval_set(resolve_shards(cfg.data.val), image_size, label_fields=())
    keep = cfg.data.val_samples
    return {"image": val["image"][:keep], "caption": val["caption"][:keep], "key": val["key"][:keep]}


@torch.no_grad()
def evaluate_answer_loss(forward, val_set: dict, encode, batch_size: int, image_dtype: torch.dtype) -> dict:
    """Mean next-token loss over the answer tokens of the val captions; `forward` is the engine or the model.
    Under DeepSpeed every rank runs every batch (ZeRO-3 gathers weights collectively): all ranks get the same."""
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(val_set["caption"]), batch_size):
        inputs = encode(val_set["caption"][start:start + batch_size], val_set["key"][start:start + batch_size])
        images = val_set["image"][start:start + batch_size].to(inputs["input_ids"].device, image_dtype)
        outputs = forward(inputs["input_ids"], inputs["attention_mask"], images, inputs["labels"])
        loss_sum += outputs["loss_sum"].item()
        tokens += int(outputs["tokens"])
    return {"answer_loss": loss_sum / max(tokens, 1), "answer_tokens": tokens, "samples": len(val_set["caption"])}
