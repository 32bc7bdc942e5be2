"""Resuming a run on another number of ranks: the global batch it keeps, and its ZeRO state re-partitioned.

A run's effective batch is its global batch G = ranks x data.batch_size x train.accum_steps. `train.global_batch`
fixes G for a fresh run (accumulation follows from the ranks); a resumed run keeps the G it was saved with,
whatever its ranks, and accumulation adjusts: accum = G / (ranks x batch_size), refused in one line when that does
not divide. ZeRO-1/2/3 states are split by rank: a state saved on another number of ranks is converted into
DeepSpeed's universal checkpoint (deepspeed.checkpoint.ds_to_universal, on rank 0) and loaded through its
`checkpoint.load_universal` switch. Where the data stands is the loader's part (mmtool/data/reading/relayout.py).
"""
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mmtool import distributed
from mmtool.engine import load_deepspeed_config
from mmtool.errors import MmtoolError

LAYOUT_FILE = "layout.json"  # in each state tag folder: {"world", "batch_size", "accum_steps"} that saved it
UNIVERSAL_DIR = "universal"  # under out/state: a converted tag, removed once loaded


def accum_for(global_batch: int, batch_size: int, world: int, source: str) -> int:
    """Micro-batches per step that make `global_batch` from `world` ranks of `batch_size`."""
    accum, left = divmod(global_batch, batch_size * world)
    if left or not accum:
        raise MmtoolError(f"{source} {global_batch} is not a multiple of data.batch_size {batch_size} x {world} "
                          f"rank(s): pick a batch size (or rank count) that divides it")
    return accum


def resolve_accum(global_batch: int | None, accum_steps: int, batch_size: int, world: int,
                  saved: dict | None) -> int:
    """train.accum_steps for this run: kept as configured, or derived from train.global_batch, or from the global
    batch of the state a resumed run continues."""
    if saved is not None:
        kept = saved["world"] * saved["batch_size"] * saved["accum_steps"]
        if global_batch is not None and global_batch != kept:
            raise MmtoolError(f"train.global_batch {global_batch}: the run being resumed trains with a global batch "
                              f"of {kept}; a resumed run keeps it")
        return accum_for(kept, batch_size, world, "the resumed run's global batch")
    if global_batch is None:
        return accum_steps
    accum = accum_for(global_batch, batch_size, world, "train.global_batch")
    if accum_steps not in (1, accum):
        raise MmtoolError(f"train.accum_steps {accum_steps} contradicts train.global_batch {global_batch} = {world} "
                          f"rank(s) x {batch_size} x {accum}: leave accum_steps out, it follows from global_batch")
    return accum


def run_accum(settings, batch_size: int, state_dir: Path | None) -> int:
    """resolve_accum for `settings` (a TrainSettings) on this run's ranks; `state_dir` when resuming."""
    saved = latest_layout(state_dir)[1] if state_dir else None
    return resolve_accum(settings.global_batch, settings.accum_steps, batch_size, distributed.world_size(), saved)


def write_layout(tag_dir: Path, world: int, batch_size: int, accum_steps: int) -> None:
    """Rank 0 records beside a state the layout that saved it."""
    if distributed.is_main():
        (tag_dir / LAYOUT_FILE).write_text(json.dumps({"world": world, "batch_size": batch_size,
                                                       "accum_steps": accum_steps}))


def latest_layout(state_dir: Path) -> tuple[str, dict | None]:
    """The newest tag under state_dir (DeepSpeed's `latest` file) and the layout saved with it (None before
    mmtool recorded layouts)."""
    latest = state_dir / "latest"
    if not latest.is_file():
        raise MmtoolError(f"--resume: no saved state under {state_dir} (the run stopped before its first state "
                          "save: pass --overwrite to start it over)")
    tag = latest.read_text().strip()
    layout = state_dir / tag / LAYOUT_FILE
    return tag, json.loads(layout.read_text()) if layout.is_file() else None


@dataclass
class ResumeSource:
    directory: Path  # what DeepSpeed loads from
    tag: str
    universal: bool  # a universal checkpoint converted for another number of ranks


def resume_source(state_dir: Path, world: int, deepspeed_config: str) -> ResumeSource:
    """Where to load the latest state from; a ZeRO-1..3 state saved on another number of ranks is converted first
    (every rank calls this; rank 0 converts)."""
    tag, saved = latest_layout(state_dir)
    zero_stage = load_deepspeed_config(deepspeed_config).get("zero_optimization", {}).get("stage", 0)
    if saved is None and zero_stage > 0:  # saved before layouts were recorded: DeepSpeed's files say the ranks
        ranks = len(list((state_dir / tag).glob("zero_pp_rank_*_mp_rank_00_optim_states.pt")))
        if ranks and ranks != world:
            raise MmtoolError(f"--resume: {state_dir / tag} was saved on {ranks} ranks by an mmtool that did not "
                              f"record its global batch: resume it on {ranks} ranks")
    if saved is None or saved["world"] == world or zero_stage == 0:  # ZeRO-0 states hold the whole optimizer
        return ResumeSource(state_dir, tag, universal=False)
    converted = state_dir / UNIVERSAL_DIR
    if distributed.is_main():
        shutil.rmtree(converted, ignore_errors=True)
        to_universal(state_dir / tag, converted / tag)
    distributed.barrier()
    return ResumeSource(converted, tag, universal=True)


def to_universal(tag_dir: Path, output: Path) -> None:
    """DeepSpeed's converter on one tag; one line naming the tag when it fails."""
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
               "--output_folder", str(output), "--num_extract_workers", "1", "--num_merge_workers", "1",
               "--inject_missing_state"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise MmtoolError(f"--resume: converting {tag_dir} to a universal checkpoint for another number of ranks "
                          f"failed: {last}")


def load_resumed(engine, source: ResumeSource) -> dict:
    """Loads `source` into `engine` (a TrainEngine) and returns its client state. After a universal checkpoint, two
    repairs to DeepSpeed 0.19's ZeRO-3 loader, then the converted copy goes (the next save writes the run's own
    format):
    - it gives every param group the first group's settings (weight decay, lr, ...): each gets its own back;
    - it hands every group one shared `step` tensor, which AdamW then advances once per group and step (Adam's
      bias correction runs ahead): each group gets its own copy."""
    client_state = engine.load_state(source.directory, source.tag)
    if source.universal and engine.zero_stage == 3:
        from mmtool.safe_state import load_state_file

        saved = load_state_file(str(source.directory / source.tag / "zero" / "optimizer_state.pt"))
        adamw = engine.optimizer.optimizer  # the torch AdamW inside DeepSpeed's ZeRO-3 optimizer
        for group, saved_group in zip(adamw.param_groups, saved["optimizer_state_dict"]["param_groups"],
                                      strict=True):
            group.update({key: value for key, value in saved_group.items() if key != "params"})
        for state in adamw.state.values():
            state["step"] = state["step"].clone()
    distributed.barrier()
    if source.universal and distributed.is_main():
        shutil.rmtree(source.directory, ignore_errors=True)
    return client_state
