"""A training run reports every record of metrics.jsonl to each tracker of train.report_to, read back from what
the tracker itself stored: TensorBoard's event files, wandb's offline run, MLflow's store."""
import json

import pytest

from mmtool.train_loop import train
from tests.helpers.trackers import jsonl_series, mlflow_series, offline_trackers, tensorboard_series  # noqa: F401
from tests.helpers.wandb_offline import offline_config, offline_history
from tests.mmtool.test_train_loop import TinyStage, in_process, settings  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def test_every_record_reaches_tensorboard_wandb_and_mlflow(in_process, offline_trackers, tmp_path):  # noqa: F811
    out = tmp_path / "runs" / "tiny"
    out.mkdir(parents=True)
    stage = TinyStage()
    config = {"train": {"lr": 0.01, "betas": [0.9, 0.999]}, "data": {"train": "shards/*.tar"}}
    train(stage, settings(report_to=["tensorboard", "wandb", "mlflow"], tracker_project="tests"), stage.batch_size,
          out, config=config, resume=False)

    expected = jsonl_series(out)
    assert set(expected) >= {"train/loss", "train/lr", "train/samples_per_s", "val/val_loss"}
    assert len(expected["train/loss"]) == TinyStage.samples // TinyStage.batch_size  # log_every 1
    assert expected["val/val_loss"] == {0: 1.0, 8: 1.0}  # eval_at_start and at the end

    tensorboard = tensorboard_series(out)
    assert tensorboard.keys() == expected.keys()
    for key, steps in expected.items():
        assert tensorboard[key] == pytest.approx(steps, rel=1e-6), key  # stored as float32

    assert offline_history(out) == expected
    assert offline_config(out)["train"] == {"lr": 0.01, "betas": [0.9, 0.999]}

    ids = json.loads((out / "trackers.json").read_text())
    assert mlflow_series(offline_trackers, ids["mlflow"]) == expected
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=offline_trackers).get_run(ids["mlflow"])
    assert run.info.run_name == "runs/tiny" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["train.betas"] == "[0.9, 0.999]"
    assert MlflowClient(tracking_uri=offline_trackers).get_experiment(run.info.experiment_id).name == "tests"
