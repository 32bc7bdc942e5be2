"""Stage 1: contrastive pretraining of the CLIP towers on webdataset shards (the loop is mmtool/train_loop.py)."""
import time
from pathlib import Path

import torch

from mmtool import distributed
from mmtool.config import to_dict
from mmtool.data.reading.images import AugmentConfig, normalize_pixels
from mmtool.data.reading.loader import make_train_loader, resolve_shards, sample_count, train_layout
from mmtool.data.reading.relayout import EpochOrigin
from mmtool.engine import TrainEngine
from mmtool.errors import MmtoolError
from mmtool.train_cadence import steps_per_epoch
from mmtool.train_loop import Stage, StepResult, start_run, train
from stage1_clip.checkpoint import save_clip
from stage1_clip.config import ClipConfig
from stage1_clip.feature_cache import open_caches
from stage1_clip.grad_cache import LOSS_INPUTS, cached_step
from stage1_clip.hard_negatives import HardNegatives
from stage1_clip.input_size import InputSize, low_res_restart
from stage1_clip.loss import build_loss
from stage1_clip.model import CLIP
from stage1_clip.tiled_loss import build_tiled_loss
from stage1_clip.tokenizer_setup import prepare_tokenizer


def pretrain_clip(cfg: ClipConfig, out: Path, resume: bool = False) -> dict:
    """Trains, evaluates and writes out/clip.pt; returns the last evaluation metrics."""
    start_run(cfg.train, cfg.data.batch_size, out, resume)
    out.mkdir(parents=True, exist_ok=True)
    return train(ClipStage(cfg, out), cfg.train, cfg.data.batch_size, out, to_dict(cfg), resume)


class ClipStage(Stage):
    def __init__(self, cfg: ClipConfig, out: Path):
        self.cfg, accum = cfg, cfg.train.accum_steps
        try:
            self.loss_fn = (build_tiled_loss(cfg.loss.type, cfg.loss.tile_size) if cfg.loss.tile_size
                            else build_loss(cfg.loss.type))
        except ValueError as err:
            raise MmtoolError(f"loss: {err}") from None
        self.urls = resolve_shards(cfg.data.train)
        self.samples = cfg.data.train_samples or sample_count(self.urls)
        self.batches_per_epoch = accum * steps_per_epoch(self.samples, cfg.data.batch_size, accum,
                                                         distributed.world_size())
        self.lr_restart = low_res_restart(cfg, self.batches_per_epoch // accum)
        self.tokenizer = prepare_tokenizer(cfg, self.urls, out)
        self.model = CLIP(cfg.model, cfg.loss, getattr(self.tokenizer, "vocab_size", None))
        if cfg.train.compile: self.model.compile_towers()  # noqa: E701 (train.py stays short)
        self.mining = HardNegatives.from_config(cfg, self.urls, self.tokenizer, self.batches_per_epoch)
        self.augment = AugmentConfig(random_resized_crop_scale=tuple(cfg.data.random_resized_crop_scale),
                                     style=cfg.data.augment)
        self.skipped_samples = 0  # unreadable samples the loader left out
        self.origin = EpochOrigin(train_layout(distributed.world_size(), cfg.data.workers, cfg.data.batch_size))
        planned = self.mining is not None and self.mining.composition != "random"
        self.size = InputSize(cfg, self.model, self.mining,
                              open_caches(self.model, cfg, Path(self.urls[0]).parent, planned, self.augment))
        self.prefetch_keys = () if self.model.image_cache else ("image",)  # a cache miss is drawn on the CPU

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(texts, self.cfg.model.text.context_length)  # ids, mask [B, T]

    def batches(self, epoch: int, skip: int):
        origin = self.origin.for_epoch(epoch, skip)
        if self.mining and origin != self.origin.current:
            raise MmtoolError(f"--resume mid-epoch with hard negatives needs the layout the epoch began on ({origin})")
        planned = self.mining.loader(epoch, skip, self.augment) if self.mining else None
        return planned if planned is not None else make_train_loader(
            self.urls, batch_size=self.cfg.data.batch_size, image_size=self.size.pixels,
            epoch=epoch, seed=self.cfg.train.seed, rank=distributed.rank(), world_size=distributed.world_size(),
            workers=self.cfg.data.workers, batches_per_epoch=self.batches_per_epoch, skip_batches=skip,
            shuffle_buffer=self.cfg.data.shuffle_buffer, augment=self.augment, resampled=self.cfg.data.resampled,
            views=self.cfg.data.cached_views if self.model.image_cache else 0, origin=origin,
            view_cache=self.model.image_cache.cache.folder if self.model.image_cache else None)

    def step(self, engine: TrainEngine, micro_batches: list, step: int) -> StepResult:
        inputs = []
        for batch in micro_batches:
            input_ids, attention_mask = self.tokenize(batch["caption"])
            negatives = (self.mining.negative_tokens(batch["key"], step) if self.mining else None) or (None, None)
            inputs.append((normalize_pixels(batch["image"].to(engine.device), engine.param_dtype),  # [B, 3, H, W]
                           *(t if t is None else t.to(engine.device) for t in (input_ids, attention_mask, *negatives)),
                           batch.get("view")))  # the images' cached views (stage1_clip/feature_cache.py)
            self.skipped_samples += sum(batch.get("skipped", {}).values())
        loss, temperature = train_step(engine, self.loss_fn, inputs)
        return StepResult(loss, samples=sum(len(batch["caption"]) for batch in micro_batches),
                          stats={"temperature": temperature, "skipped_samples": self.skipped_samples,
                                 **self.size.stats()})

    def evaluate(self, engine: TrainEngine) -> dict:
        return self.size.evaluate(engine.module, self.tokenize)

    def refresh(self, engine: TrainEngine, progress, log) -> bool:
        """Input size and hard negatives when due; True when the rest of the epoch's batches changed."""
        resized = self.size.follow(progress.step, log.message)
        if not (self.mining and self.mining.refresh_due(progress.step)):
            return resized
        started = time.perf_counter()
        changed = self.mining.refresh(engine.module, progress.step, progress.epoch,
                                      progress.batch_in_epoch * self.cfg.train.accum_steps)
        log.message(f"hard negatives refreshed at step {progress.step} in {time.perf_counter() - started:.1f} s")
        return changed or resized

    def state(self) -> dict:
        return {"hard_negatives": self.mining.state() if self.mining else None, "epoch_layout": self.origin.state()}

    def load_state(self, client_state: dict) -> None:
        self.origin.load_state(client_state.get("epoch_layout"))
        if self.mining:
            self.mining.load_state(client_state.get("hard_negatives"))

    def save(self, out: Path, state_dict: dict) -> Path:
        save_clip(out / "clip.pt", self.cfg, state_dict, self.tokenizer, self.model)
        return out / "clip.pt"


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
