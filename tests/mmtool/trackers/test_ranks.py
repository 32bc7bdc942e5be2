"""Two ranks, all three trackers: only rank 0 reports (one wandb run, one MLflow run, one TensorBoard writer),
with every record of metrics.jsonl."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.distributed import free_port
from tests.helpers.trackers import jsonl_series, mlflow_series, offline_trackers  # noqa: F401 - a fixture
from tests.helpers.wandb_offline import offline_history, offline_logs
from tests.stage1_clip.test_train_e2e import clean_env


@pytest.mark.slow
@pytest.mark.distributed
def test_only_rank_0_reports(offline_trackers, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "tests.mmtool.trackers.test_ranks", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    expected = jsonl_series(out)
    assert len(expected["train/loss"]) == 4  # 64 samples, 2 ranks x 8 a step
    assert len(offline_logs(out)) == 1 and offline_history(out) == expected
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri=offline_trackers).search_runs(
        [MlflowClient(tracking_uri=offline_trackers).get_experiment_by_name("mmtool").experiment_id])
    assert [run.info.run_id for run in runs] == [json.loads((out / "trackers.json").read_text())["mlflow"]]
    assert mlflow_series(offline_trackers, runs[0].info.run_id) == expected
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file


if __name__ == "__main__":  # one rank of the two-rank test
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    from mmtool import distributed
    from mmtool.train_loop import train
    from tests.mmtool.test_train_loop import TinyStage, settings

    stage = TinyStage()
    train(stage, settings(report_to=["tensorboard", "wandb", "mlflow"]), stage.batch_size, Path(sys.argv[1]), {},
          False)
    distributed.exit_cleanly()
