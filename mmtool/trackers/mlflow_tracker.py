"""`report_to: [mlflow]`: an MLflow run in the experiment `train.tracker_project`, named after the run folder, with
the flattened config as params and every record as metrics.

The store is MLflow's own choice: MLFLOW_TRACKING_URI (a tracking server, or e.g. sqlite:///runs/mlflow.db), else
MLflow's default, ./mlflow.db in the current folder. Metric names keep to MLflow's characters: `R@1` becomes
`R_at_1`."""
import json
import re
import time
from pathlib import Path

from mmtool.errors import MmtoolError
from mmtool.trackers import first_line, run_name, scalars

MAX_PARAMS, MAX_VALUE = 100, 6000  # MLflow's limits: params per batch, characters per param value


def metric_name(key: str) -> str:
    return re.sub(r"[^/\w.\- ]", "_", key.replace("@", "_at_"))


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 0.001}} -> {"train.lr": "0.001"}; lists and other values as JSON, cut to MLflow's limit."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            params[metric_name(f"{prefix}{key}")] = text[:MAX_VALUE]
    return params


class MlflowTracker:
    def __init__(self, out: Path, project: str, config: dict, run_id: str | None):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            self.client = mlflow.MlflowClient()
            self.run_id = self._start(out, project, config, run_id)
        except (MlflowException, ImportError) as err:  # ImportError: a store whose driver is not installed
            raise MmtoolError(f"train.report_to: mlflow could not start a run in {mlflow.get_tracking_uri()} "
                              f"({first_line(err)})") from None

    def _start(self, out: Path, project: str, config: dict, run_id: str | None) -> str:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
            except MlflowException:  # not in this store (another MLFLOW_TRACKING_URI): a new run
                run_id = None
        if not run_id:
            experiment = self.client.get_experiment_by_name(project)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
            run_id = self.client.create_run(experiment_id, run_name=run_name(out),
                                            tags={"mmtool.run_folder": str(out.resolve())}).info.run_id
            params = [Param(key, value) for key, value in flat_params(config).items()]
            for start in range(0, len(params), MAX_PARAMS):
                self.client.log_batch(run_id, params=params[start:start + MAX_PARAMS])
        return run_id

    def log(self, step: int, split: str, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(metric_name(key), value, now, step) for key, value in scalars(split, metrics).items()]
        if values:
            self.client.log_batch(self.run_id, metrics=values)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
