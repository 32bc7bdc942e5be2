"""A run folder (--out): who may start in it, and the resumable DeepSpeed training states kept under it."""
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mmtool import distributed
from mmtool.engine import TrainEngine
from mmtool.errors import MmtoolError
from mmtool.world_resize import write_layout

STATE_DIR = "state"  # under --out
STATE_TAG = re.compile(r"step(\d+)")
# What says a folder holds a run, and what --overwrite clears: every file a training run writes under --out.
RUN_MARKERS = ("config.json", STATE_DIR, "metrics.jsonl")
# (A tracker's own store, MLflow's or wandb's service, keeps the runs it was sent: only local files go.)
RUN_FILES = (*RUN_MARKERS, "tensorboard", "wandb", "trackers.json", "eval.json", "plot.png", "tokenizer.model",
             "clip.pt", "clip.safetensors", "vlm.pt", "vlm.safetensors", "adapter")


@dataclass
class Progress:
    """Where a run stands; saved in every training state (as "progress") so --resume continues from there."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # optimizer steps done in this epoch
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss, in all
    nonfinite_in_a_row: int = 0


def restarted_by_agent() -> bool:
    """torchrun's agent restarted this run's processes after one of them failed (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def resuming(out: Path, resume: bool) -> bool:
    """--resume, or a restart by torchrun's agent after the run saved a state: it continues from that state."""
    return resume or (restarted_by_agent() and (out / STATE_DIR / "latest").is_file())


def claim_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Before a run writes anything: a folder holding another run is refused unless the run continues it
    (--resume, or a restart by torchrun's agent: the folder is this run's) or replaces it (--overwrite: that run's
    files are removed, the folder's other files kept)."""
    if resume and overwrite:
        raise MmtoolError("--resume and --overwrite exclude each other: continue the run in --out, or start over")
    held = [name for name in RUN_MARKERS if (out / name).exists()]
    if resume or not held or restarted_by_agent():
        return
    if not overwrite:
        raise MmtoolError(f"--out {out} already holds a run ({', '.join(held)}): pass --resume to continue it or "
                          "--overwrite to start over")
    if os.environ.get("RANK", "0") == "0":  # the process group is not up yet: the launcher's rank says who clears
        for name in RUN_FILES:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


def save_rotating_state(engine: TrainEngine, out: Path, step: int, client_state: dict, keep: int,
                        layout: dict | None = None) -> None:
    """Writes state tag `step<N>` (every rank takes part) with the `layout` that saved it (ranks, batch size,
    accumulation: mmtool/world_resize.py; the loop always gives it), then rank 0 deletes all but the newest `keep`
    tags; other folders under state/ are not the run's to delete."""
    state_dir = out / STATE_DIR
    engine.save_state(state_dir, f"step{step}", client_state)
    if layout:
        write_layout(state_dir / f"step{step}", **layout)
    distributed.barrier()
    if distributed.is_main():
        tags = {int(match[1]): path for path in state_dir.iterdir()
                if path.is_dir() and (match := STATE_TAG.fullmatch(path.name))}
        for old in sorted(tags)[:-keep]:
            shutil.rmtree(tags[old], ignore_errors=True)


def load_latest_state(engine: TrainEngine, out: Path) -> dict:
    """The client state saved with the newest tag under out/state (the engine is restored in place)."""
    return engine.load_state(out / STATE_DIR)
