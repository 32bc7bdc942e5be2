"""The one training loop of all three stages: schedule, engine, resume, logging, cadence, non-finite steps, saving.

A stage supplies only what differs, as a `Stage`: its micro-batches for an epoch, its optimizer step, its
evaluation and what it saves at the end. `train()` reads top to bottom like the loop it is.
"""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from mmtool import distributed
from mmtool.data.reading.skips import BatchSkips
from mmtool.device_prefetch import prefetch_to_device
from mmtool.engine import OptimSettings, TrainEngine
from mmtool.nonfinite import count_nonfinite
from mmtool.optim import WarmRestart
from mmtool.run_log import RunLog, ThroughputWindow
from mmtool.run_plot import plot_run_if_possible
from mmtool.trackers import check_trackers
from mmtool.train_cadence import Cadence, steps_per_epoch
from mmtool.train_config import TrainSettings
from mmtool.train_state import STATE_DIR, Progress, resuming, save_rotating_state
from mmtool.world_resize import load_resumed, resume_source, run_accum


@dataclass
class StepResult:
    loss: torch.Tensor  # this rank's loss for the step, a scalar (logged as the mean over ranks)
    samples: int  # samples this rank trained on in the step
    tokens: int = 0  # text tokens this rank trained on, when the stage counts them (logged as tokens_per_s)
    stats: dict = field(default_factory=dict)  # more figures for the train log, e.g. CLIP's temperature


class Stage:
    """What a stage hands the loop. `model` is built whole on every rank (ZeRO-3 partitions loaded weights);
    `samples` is the size of one epoch, all ranks together."""

    model: torch.nn.Module
    samples: int
    prefetch_keys: tuple[str, ...] = ()  # batch tensors the loop copies to the GPU a step ahead (device_prefetch)
    lr_restart: WarmRestart | None = None  # a second lr warm-up and decay for the run's last phase

    def batches(self, epoch: int, skip: int) -> Iterable:
        """This rank's micro-batches of `epoch` after the first `skip` (the same list on every run: exact resume)."""
        raise NotImplementedError

    def step(self, engine: TrainEngine, micro_batches: list, step: int) -> StepResult:
        """Optimizer step number `step` (0-based): forward, engine.backward(loss) and engine.step() per micro-batch."""
        raise NotImplementedError

    def evaluate(self, engine: TrainEngine) -> dict:
        """Val metrics, {} without a val set; every rank calls it (ZeRO-3 gathers weights collectively)."""
        return {}

    def save(self, out: Path, state_dict: dict) -> Path:
        """Writes the stage's checkpoint from the gathered float32 weights (rank 0 only); returns its path."""
        raise NotImplementedError

    def refresh(self, engine: TrainEngine, progress: Progress, log: RunLog) -> bool:
        """Called before training and after each step; True when the rest of the epoch's batches changed."""
        return False

    def state(self) -> dict:
        """What the stage adds to each training state for --resume."""
        return {}

    def load_state(self, client_state: dict) -> None:
        pass


def start_run(settings: TrainSettings, batch_size: int, out: Path, resume: bool) -> None:
    """Before a stage builds its model: process group, threads, the seed its initial weights come from, and
    settings.accum_steps for this number of ranks (from train.global_batch, or the resumed run's global batch)."""
    distributed.init_distributed()
    check_trackers(settings.report_to)  # a missing wandb / mlflow fails now, not after the model is built
    settings.accum_steps = run_accum(settings, batch_size, out / STATE_DIR if resuming(out, resume) else None)
    if threads := distributed.intra_op_threads(settings.threads):
        torch.set_num_threads(threads)
    torch.manual_seed(settings.seed)  # the same initial weights on every rank


def train(stage: Stage, settings: TrainSettings, batch_size: int, out: Path, config: dict, resume: bool) -> dict:
    """Trains `stage`, writes config.json, metrics, training states and the stage's checkpoint under `out`;
    returns the last val metrics."""
    distributed.init_distributed()
    world, accum, resume = distributed.world_size(), settings.accum_steps, resuming(out, resume)
    per_epoch = steps_per_epoch(stage.samples, batch_size, accum, world)
    total_steps = settings.max_steps or settings.epochs * per_epoch
    source = resume_source(out / STATE_DIR, world, settings.deepspeed) if resume else None
    engine = TrainEngine(stage.model, settings.deepspeed, batch_size, accum_steps=accum,
                         optim=OptimSettings.from_train(settings, total_steps, stage.lr_restart),
                         load_universal=bool(source and source.universal))
    progress = Progress()
    if source:
        client_state = load_resumed(engine, source)
        progress = Progress(**client_state["progress"])
        stage.load_state(client_state)
    if distributed.is_main():
        (out / "config.json").write_text(json.dumps(config, indent=2))
    log = RunLog(out, total_steps, progress.step, enabled=distributed.is_main(), report_to=settings.report_to,
                 project=settings.tracker_project, config=config)
    params = list(stage.model.parameters())
    log.message(f"training {sum(p.numel() for p in params if p.requires_grad) / 1e6:.3f}M of "
                f"{sum(p.numel() for p in params) / 1e6:.1f}M parameters on {stage.samples} samples, global batch "
                f"{world} rank(s) x {batch_size} x {accum} accumulated: {per_epoch} steps/epoch, {total_steps} steps")

    def save_state() -> None:
        save_rotating_state(engine, out, progress.step, {"progress": asdict(progress), **stage.state()},
                            settings.keep_states, {"world": world, "batch_size": batch_size, "accum_steps": accum})

    def evaluate() -> dict:
        engine.train(False)
        metrics = stage.evaluate(engine)
        engine.train(True)
        log.evaluation(progress.step, metrics)
        return metrics

    cadence = Cadence(settings.save_every, settings.eval_every, save_state, evaluate)
    if settings.eval_at_start and progress.step == 0:
        cadence.evaluate(0)
    engine.train()
    if progress.step < total_steps:
        stage.refresh(engine, progress, log)  # e.g. stage 1's first hard-negative mining
    window, shown, skips = ThroughputWindow(), {}, BatchSkips()
    while progress.step < total_steps:
        micro_batches = []
        batches = prefetch_to_device(stage.batches(progress.epoch, progress.batch_in_epoch * accum), engine.device,
                                     stage.prefetch_keys)
        for batch in window.timed(batches):
            micro_batches.append(batch)
            skips.add(batch)
            if len(micro_batches) < accum:
                continue
            result = stage.step(engine, micro_batches, progress.step)
            micro_batches = []
            progress.step += 1
            progress.batch_in_epoch += 1
            count_nonfinite(engine, progress, settings.max_nonfinite_steps, log)
            restart = progress.step < total_steps and stage.refresh(engine, progress, log)
            window.add(result, world)
            skips.trained(result.samples)
            if progress.step % settings.log_every == 0 or progress.step == total_steps:
                stats = {"loss": distributed.mean_over_ranks(result.loss.detach()), "lr": engine.current_lr(),
                         **result.stats, **window.rates(), "nonfinite_steps": progress.nonfinite_steps}
                log.write(progress.step, "train", stats)
                shown = {"loss": stats["loss"], "lr": stats["lr"], "samples/s": stats["samples_per_s"]}
            log.progress(1, **shown)
            cadence.after_step(progress.step)
            if progress.step >= total_steps or restart:
                break  # done, or the stage changed the rest of this epoch's batches: ask for them again
        else:  # the epoch's batches ran out
            progress.epoch += 1
            progress.batch_in_epoch = 0
            cadence.after_epoch(progress.step)

    metrics = cadence.finish(progress.step)
    log.message(skips.summary())  # every rank takes part: the counts are summed
    state_dict = engine.full_state_dict()  # every rank takes part: ZeRO-3 gathers the partitions
    if distributed.is_main():
        written = stage.save(out, state_dict)
        if metrics:
            (out / "eval.json").write_text(json.dumps(metrics, indent=2))
        log.message(f"wrote {written}")
    log.close()
    if distributed.is_main() and (plot := plot_run_if_possible(out)):
        print(f"wrote {plot}")
    distributed.barrier()
    return metrics
