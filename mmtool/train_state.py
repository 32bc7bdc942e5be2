"""Resumable DeepSpeed training states kept under a run folder, newest `keep` only (stages 2 and 3)."""
import shutil
from pathlib import Path

from mmtool import distributed
from mmtool.engine import TrainEngine

STATE_DIR = "state"  # under --out


def save_rotating_state(engine: TrainEngine, out: Path, step: int, client_state: dict, keep: int) -> None:
    """Writes state tag `step<N>` (every rank takes part), then rank 0 deletes all but the newest `keep` tags."""
    state_dir = out / STATE_DIR
    engine.save_state(state_dir, f"step{step}", client_state)
    distributed.barrier()
    if distributed.is_main():
        tags = sorted((p for p in state_dir.glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def load_latest_state(engine: TrainEngine, out: Path) -> dict:
    """The client state saved with the newest tag under out/state (the engine is restored in place)."""
    return engine.load_state(out / STATE_DIR)
