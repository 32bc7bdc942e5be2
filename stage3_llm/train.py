"""The stage-3 loop: instruction-tune an aligned model on LLaVA conversations (LoRA + projector, or full)."""
import json
from collections import Counter
from functools import partial
from pathlib import Path

import torch

from mmtool import distributed
from mmtool.checkpoint import file_sha256
from mmtool.config import to_dict
from mmtool.data.reading.relayout import EpochOrigin, Layout
from mmtool.engine import TrainEngine
from mmtool.errors import MmtoolError
from mmtool.train_cadence import steps_per_epoch
from mmtool.train_loop import Stage, StepResult, start_run, train
from stage2_projector.answer_loss import check_weighting
from stage2_projector.checkpoint import MODEL_FILE, VlmBundle
from stage2_projector.evaluate import evaluate_answer_loss, model_inputs
from stage2_projector.feature_cache import open_feature_cache
from stage2_projector.packing import batch_tokens, check_packable
from stage3_llm.checkpoint import add_lora, save_finetuned
from stage3_llm.config import FinetuneConfig
from stage3_llm.conversations import collate_conversations, epoch_batches, readable_items, training_items
from stage3_llm.start_model import start_bundle, start_file
from stage3_llm.training_data import finetune_datasets, set_tower_tags


def finetune(cfg: FinetuneConfig, out: Path, resume: bool = False) -> dict:
    """Trains on cfg.data.train and writes out/vlm.pt (+ out/adapter/); returns the last val metrics."""
    base_file = start_file(cfg)
    base_sha = file_sha256(base_file)
    if resume:  # before start_run, which asks for a saved state: a run from another base is the clearer error
        check_resume_base(out, base_sha)
    start_run(cfg.train, cfg.data.batch_size, out, resume)  # LoRA's and a fresh projector's initial weights
    out.mkdir(parents=True, exist_ok=True)
    bundle = start_bundle(cfg, base_file)
    continues_adapter = bool(bundle.record.get("finetune", {}).get("lora"))  # keep training its adapter
    if cfg.model.lora.enabled and not continues_adapter:
        add_lora(bundle, cfg.model.lora)
    if not cfg.model.lora.enabled and continues_adapter:
        raise MmtoolError(f"--model {cfg.model.base} carries a LoRA adapter: keep model.lora.enabled true, or "
                          "export a merged model for full fine-tuning")
    set_tower_tags(cfg, bundle)
    record = {**bundle.record, "finetune": {"config": to_dict(cfg), "base": str(base_file), "base_sha256": base_sha,
                                            "lora": cfg.model.lora.enabled}}
    config = {**to_dict(cfg), "base_sha256": base_sha}  # what --resume checks
    return train(FinetuneStage(cfg, bundle, record), cfg.train, cfg.data.batch_size, out, config, resume)


def check_resume_base(out: Path, base_sha: str) -> None:
    """--resume continues only from the checkpoint the run started from."""
    started = out / "config.json"
    if started.is_file():
        recorded = json.loads(started.read_text()).get("base_sha256")
        if recorded and recorded != base_sha:
            raise MmtoolError(f"--resume: {out} was started from another --model (sha256 {recorded[:12]}, "
                              f"now {base_sha[:12]})")


class FinetuneStage(Stage):
    def __init__(self, cfg: FinetuneConfig, bundle: VlmBundle, record: dict):
        self.cfg, self.bundle, self.record, self.model = cfg, bundle, record, bundle.model
        self.train_set, self.val_set = finetune_datasets(cfg, bundle)
        self.samples = len(self.train_set)
        self.batches_per_epoch = cfg.train.accum_steps * steps_per_epoch(
            self.samples, cfg.data.batch_size, cfg.train.accum_steps, distributed.world_size())
        self.origin = EpochOrigin(Layout(distributed.world_size(), 1, cfg.data.batch_size))
        if cfg.data.packed:
            check_packable(bundle.llm.model)
        self.collate = partial(collate_conversations, pad_id=bundle.tokenizer.pad_token_id, packed=cfg.data.packed,
                               image_token_id=bundle.llm.image_token_id)
        check_weighting(cfg.train.answer_weighting)
        self.model.answer_weighting = cfg.train.answer_weighting
        self.model.feature_cache = self.cache = open_feature_cache(
            self.model, bundle.record, cfg.data.feature_cache, Path(cfg.data.train).parent, cfg.train)

    def batches(self, epoch: int, skip: int):
        batches = epoch_batches(self.samples, self.cfg.data.batch_size, self.cfg.train.seed, epoch,
                                distributed.rank(), distributed.world_size(), self.batches_per_epoch,
                                origin=self.origin.for_epoch(epoch, skip))
        for indices in batches[skip:]:  # decoded here: a batch carries the count of images it could not use
            skipped = Counter()
            yield {"items": training_items(self.train_set, indices, skipped), "skipped": dict(skipped)}

    def step(self, engine: TrainEngine, micro_batches: list, step: int) -> StepResult:
        tokens = 0
        for micro_step, micro_batch in enumerate(micro_batches):
            # Dropout (LoRA's too) draws from a generator seeded by the position in training, so a resumed run
            # repeats an uninterrupted one exactly (DeepSpeed states hold no RNG state).
            torch.manual_seed(self.cfg.train.seed * 1_000_003 + step * len(micro_batches) + micro_step)
            batch = self.collate(micro_batch["items"])
            outputs = engine(*model_inputs(batch, engine.device, engine.param_dtype))
            engine.backward(outputs["loss"])
            engine.step()
            tokens += batch_tokens(batch)
        return StepResult(outputs["loss"], samples=sum(len(batch["items"]) for batch in micro_batches),
                          tokens=tokens,
                          stats=self.cache.stats() if self.cache else {})

    def state(self) -> dict:
        return {"epoch_layout": self.origin.state()}

    def load_state(self, client_state: dict) -> None:
        self.origin.load_state(client_state.get("epoch_layout"))

    def evaluate(self, engine: TrainEngine) -> dict:
        if self.val_set is None:
            return {}
        size, batch_size, skipped = len(self.val_set), self.cfg.data.batch_size, Counter()
        readable = (readable_items(self.val_set, list(range(start, min(start + batch_size, size))), skipped)
                    for start in range(0, size, batch_size))
        batches = (model_inputs(self.collate(items), engine.device, engine.param_dtype) for items in readable if items)
        metrics = evaluate_answer_loss(engine, batches)
        return {**metrics, "conversations": size - sum(skipped.values()),
                **({"skipped_conversations": sum(skipped.values())} if skipped else {})}

    def save(self, out: Path, state_dict: dict) -> Path:
        save_finetuned(out, self.record, state_dict, self.bundle.model.llm, self.cfg.model.lora.enabled)
        return out / MODEL_FILE

