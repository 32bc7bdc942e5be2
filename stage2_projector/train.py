"""Stage 2: train the projector on caption pairs, image tower and LLM frozen (the loop is mmtool/train_loop.py)."""
from pathlib import Path

import torch

from mmtool import distributed
from mmtool.config import to_dict
from mmtool.data.reading.images import AugmentConfig, normalize_pixels
from mmtool.data.reading.loader import make_eval_set, make_train_loader, resolve_shards, sample_count, train_layout
from mmtool.data.reading.relayout import EpochOrigin
from mmtool.engine import TrainEngine
from mmtool.errors import MmtoolError
from mmtool.train_cadence import steps_per_epoch
from mmtool.train_loop import Stage, StepResult, start_run, train
from stage2_projector.checkpoint import MODEL_FILE, VlmBundle, build_vlm, save_vlm
from stage2_projector.config import AlignConfig
from stage2_projector.data import encode_caption_batch
from stage2_projector.evaluate import evaluate_answer_loss, model_inputs
from stage2_projector.feature_cache import open_feature_cache
from stage2_projector.packing import batch_tokens, check_packable


def align(cfg: AlignConfig, out: Path, resume: bool = False, bundle: VlmBundle | None = None) -> dict:
    """Trains the projector and writes out/vlm.pt; returns the last val metrics. `bundle` replaces building the
    model from cfg.model (tests pass a tiny one)."""
    start_run(cfg.train, cfg.data.batch_size, out, resume)  # the projector's initial weights: the same on every rank
    out.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        if not cfg.model.vision:
            raise MmtoolError("model.vision: give the stage-1 checkpoint (--vision ckpt/clip/clip.pt)")
        bundle = build_vlm(cfg, cfg.model.vision)
    return train(AlignStage(cfg, bundle), cfg.train, cfg.data.batch_size, out, to_dict(cfg), resume)


class AlignStage(Stage):
    def __init__(self, cfg: AlignConfig, bundle: VlmBundle):
        self.cfg, self.bundle, self.model = cfg, bundle, bundle.model
        self.image_size = bundle.record["vision"]["image_size"]
        self.urls = resolve_shards(cfg.data.train)
        self.samples = cfg.data.train_samples or sample_count(self.urls)
        self.batches_per_epoch = cfg.train.accum_steps * steps_per_epoch(
            self.samples, cfg.data.batch_size, cfg.train.accum_steps, distributed.world_size())
        self.val_set = make_val_set(cfg, self.image_size) if cfg.data.val else None
        self.augment = AugmentConfig(random_resized_crop_scale=tuple(cfg.data.random_resized_crop_scale))
        self.origin = EpochOrigin(train_layout(distributed.world_size(), cfg.data.workers, cfg.data.batch_size))
        if cfg.data.packed:
            check_packable(bundle.llm.model)
        # A random crop gives a new view each epoch: nothing to reuse.
        unaugmented = self.augment.random_resized_crop_scale == (1.0, 1.0)
        self.model.feature_cache = self.cache = open_feature_cache(
            self.model, bundle.record, cfg.data.feature_cache if unaugmented else None, Path(self.urls[0]).parent,
            cfg.train)

    def batches(self, epoch: int, skip: int):
        return make_train_loader(
            self.urls, batch_size=self.cfg.data.batch_size, image_size=self.image_size, epoch=epoch,
            seed=self.cfg.train.seed, rank=distributed.rank(), world_size=distributed.world_size(),
            workers=self.cfg.data.workers, batches_per_epoch=self.batches_per_epoch, skip_batches=skip,
            shuffle_buffer=self.cfg.data.shuffle_buffer, augment=self.augment, resampled=self.cfg.data.resampled,
            origin=self.origin.for_epoch(epoch, skip))

    def state(self) -> dict:
        return {"epoch_layout": self.origin.state()}

    def load_state(self, client_state: dict) -> None:
        self.origin.load_state(client_state.get("epoch_layout"))

    def step(self, engine: TrainEngine, micro_batches: list, step: int) -> StepResult:
        tokens = 0
        for batch in micro_batches:
            encoded = encode(self.bundle, self.cfg, batch["caption"], batch["key"], normalize_pixels(batch["image"]))
            outputs = engine(*model_inputs(encoded, engine.device, engine.param_dtype))
            engine.backward(outputs["loss"])
            engine.step()
            tokens += batch_tokens(encoded)
        return StepResult(outputs["loss"], samples=sum(len(b["caption"]) for b in micro_batches), tokens=tokens,
                          stats=self.cache.stats() if self.cache else {})

    def evaluate(self, engine: TrainEngine) -> dict:
        if self.val_set is None:
            return {}
        batches = val_batches(self.bundle, self.cfg, self.val_set, engine.device, engine.param_dtype)
        return {**evaluate_answer_loss(engine, batches), "samples": len(self.val_set["caption"])}

    def save(self, out: Path, state_dict: dict) -> Path:
        save_vlm(out / MODEL_FILE, self.bundle.record, state_dict)
        return out / MODEL_FILE


def encode(bundle: VlmBundle, cfg: AlignConfig, captions: list[str], keys: list[str], images: torch.Tensor) -> dict:
    """A batch of caption conversations: {"input_ids", "attention_mask", "labels"} [B, T] (or packed, see
    encode_caption_batch), "pixel_values"."""
    batch = encode_caption_batch(bundle.tokenizer, captions, keys, cfg.data.instructions, bundle.num_image_tokens,
                                 cfg.data.max_length, packed=cfg.data.packed)
    return {**batch, "pixel_values": images}


def make_val_set(cfg: AlignConfig, image_size: int) -> dict:
    """The first data.val_samples val samples (canonical captions), eval-transformed."""
    val = make_eval_set(resolve_shards(cfg.data.val), image_size, label_fields=())
    keep = cfg.data.val_samples
    return {"image": val["image"][:keep], "caption": val["caption"][:keep], "key": val["key"][:keep]}


def val_batches(bundle: VlmBundle, cfg: AlignConfig, val_set: dict, device: torch.device, image_dtype: torch.dtype):
    """The val set's forward arguments in batches of data.batch_size (for evaluate_answer_loss)."""
    for start in range(0, len(val_set["caption"]), cfg.data.batch_size):
        part = slice(start, start + cfg.data.batch_size)
        yield model_inputs(encode(bundle, cfg, val_set["caption"][part], val_set["key"][part], val_set["image"][part]),
                           device, image_dtype)
