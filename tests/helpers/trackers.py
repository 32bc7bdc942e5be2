"""The trackers of train.report_to, kept on this machine: wandb offline and an MLflow sqlite store under the test's
tmp_path; and what each tracker recorded, read back in one shape (series name -> step -> value)."""
import json
from pathlib import Path

import pytest

WANDB_VARIABLES = ("WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME")


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch) -> str:
    """wandb in offline mode with its home folders under tmp_path, MLflow in tmp_path/mlflow.db; returns the
    tracking URI."""
    for name in WANDB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def jsonl_series(out: Path) -> dict[str, dict[int, float]]:
    """What metrics.jsonl holds, as the trackers get it: every number of a record as `split/key`."""
    series: dict[str, dict[int, float]] = {}
    for record in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
        for key, value in record.items():
            if key not in ("time", "step", "split") and isinstance(value, (int, float)):
                series.setdefault(f"{record['split']}/{key}", {})[record["step"]] = float(value)
    return series


def tensorboard_series(out: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def mlflow_series(uri: str, run_id: str) -> dict[str, dict[int, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {key: {metric.step: metric.value for metric in client.get_metric_history(run_id, key)}
            for key in client.get_run(run_id).data.metrics}
