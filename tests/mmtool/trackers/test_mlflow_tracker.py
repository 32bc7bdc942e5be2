"""MLflow: names kept to MLflow's characters, the config as params, a resumed run continuing the same MLflow run,
and a store it cannot use refused in one line."""
import json

import pytest
from mlflow import MlflowClient

from mmtool.errors import MmtoolError
from mmtool.trackers import Trackers
from mmtool.trackers.mlflow_tracker import MAX_VALUE, flat_params, metric_name
from tests.helpers.trackers import mlflow_series, offline_trackers  # noqa: F401 - a fixture


def test_names_and_params_fit_mlflow():
    assert metric_name("val/image_to_text_R@1") == "val/image_to_text_R_at_1"
    assert metric_name("val/acc (top-5)") == "val/acc _top-5_"
    params = flat_params({"train": {"lr": 0.001, "betas": [0.9, 0.95], "max_steps": None, "param_groups": []},
                          "data": {"train": "shards/*.tar", "augment": {}}, "note": "x" * 7000})
    assert params == {"train.lr": "0.001", "train.betas": "[0.9, 0.95]", "train.max_steps": "null",
                      "train.param_groups": "[]", "data.train": "shards/*.tar", "data.augment": "{}",
                      "note": "x" * MAX_VALUE}


def test_a_resumed_run_continues_the_same_mlflow_run(offline_trackers, tmp_path):  # noqa: F811
    config = {"train": {f"key{i}": i for i in range(150)}}  # more params than one MLflow batch takes
    first = Trackers(["mlflow"], tmp_path, "tests", config)
    first.log(1, "train", {"loss": 2.0})
    first.close()
    second = Trackers(["mlflow"], tmp_path, "tests", config)
    second.log(2, "train", {"loss": 1.5})
    second.log(2, "val", {"image_to_text_R@1": 0.25})
    second.close()
    run_id = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    assert second.open["mlflow"].run_id == run_id
    assert mlflow_series(offline_trackers, run_id) == {"train/loss": {1: 2.0, 2: 1.5},
                                                      "val/image_to_text_R_at_1": {2: 0.25}}
    run = MlflowClient(tracking_uri=offline_trackers).get_run(run_id)
    assert len(run.data.params) == 150 and run.info.status == "FINISHED"


def test_a_store_mlflow_cannot_use_fails_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())  # the retired file store
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(MmtoolError) as caught:
        Trackers(["mlflow"], tmp_path, "tests", {})
    message = str(caught.value)
    assert message.startswith(f"train.report_to: mlflow could not start a run in {(tmp_path / 'mlruns').as_uri()} "
                              "(MlflowException: ") and "\n" not in message
    assert not (tmp_path / "trackers.json").exists()
