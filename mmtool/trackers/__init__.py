"""Experiment trackers behind the run log (`train.report_to`): TensorBoard, Weights & Biases, MLflow.

metrics.jsonl is always written; each tracker named gets the same records as `split/key` series by step. wandb and
mlflow are optional libraries (`pip install 'mmtool[trackers]'`). Only rank 0 opens trackers (mmtool/run_log.py)."""
import difflib
import importlib.util
import json
from pathlib import Path

from mmtool.errors import MmtoolError

TRACKERS = ("tensorboard", "wandb", "mlflow")
# The package each tracker needs, and how to install it (tensorboard is one of mmtool's own dependencies).
PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"),
            "wandb": ("wandb", "pip install 'mmtool[trackers]'"),
            "mlflow": ("mlflow", "pip install 'mmtool[trackers]'")}
RUN_IDS = "trackers.json"  # under --out: the tracker runs that a resumed run continues


def unknown_tracker(names: list[str]) -> str | None:
    """Why `names` is not a valid train.report_to, or None."""
    for name in names:
        if name not in TRACKERS:
            close = difflib.get_close_matches(str(name), TRACKERS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return f"report_to: unknown tracker {name!r} ({hint}known: {', '.join(TRACKERS)})"
    return None


def check_trackers(names: list[str]) -> None:
    """Before a run builds its model (on every rank, so that all fail alike): each tracker's package is there."""
    for name in names:
        package, install = PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise MmtoolError(f"train.report_to: {name} needs the {package} package: {install}")


class Trackers:
    """The open trackers of one run. A resumed run continues the tracker runs recorded in out/trackers.json. A
    tracker that fails to log (its server gone) is dropped with a message: training goes on, and metrics.jsonl
    keeps every record."""

    def __init__(self, names: list[str], out: Path, project: str, config: dict, say=print):
        names = list(dict.fromkeys(names))
        check_trackers(names)
        ids_file = out / RUN_IDS
        ids = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
        self.open, self.say = {}, say
        try:
            for name in names:
                self.open[name] = tracker_class(name)(out, project, config, ids.get(name))
        except BaseException:
            self.close()
            raise
        ids.update({name: tracker.run_id for name, tracker in self.open.items() if tracker.run_id})
        if ids:
            ids_file.write_text(json.dumps(ids, indent=2) + "\n")

    def log(self, step: int, split: str, metrics: dict) -> None:
        for name, tracker in list(self.open.items()):
            try:
                tracker.log(step, split, metrics)
            except Exception as err:
                del self.open[name]
                self.say(f"train.report_to: {name} stopped at step {step} ({first_line(err)}); metrics.jsonl "
                         "has every record")

    def close(self) -> None:
        for tracker in self.open.values():
            tracker.close()


def tracker_class(name: str):
    """Imported on use, by import statements the import contract (.importlinter) sees."""
    if name == "tensorboard":
        from mmtool.trackers.tensorboard_tracker import TensorBoardTracker

        return TensorBoardTracker
    if name == "wandb":
        from mmtool.trackers.wandb_tracker import WandbTracker

        return WandbTracker
    from mmtool.trackers.mlflow_tracker import MlflowTracker

    return MlflowTracker


def run_name(out: Path) -> str:
    """The run's name in a tracker: the last two parts of its folder (pipeline/clip, base/clip)."""
    return "/".join(out.resolve().parts[-2:])


def scalars(split: str, metrics: dict) -> dict[str, float]:
    """The numbers of a record as `split/key` series (anything else stays in metrics.jsonl only)."""
    return {f"{split}/{key}": float(value) for key, value in metrics.items() if isinstance(value, (int, float))}


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
