"""train.report_to: a list in the config checked at load, a missing library named with its extra before the model
is built, trackers opened on rank 0 only, and a tracker that fails mid-run dropped without stopping training."""
import sys

import pytest

from mmtool.config import load_config
from mmtool.errors import MmtoolError
from mmtool.run_log import RunLog
from mmtool.trackers import Trackers, check_trackers
from mmtool.train_config import TrainSettings
from mmtool.train_loop import start_run
from stage1_clip.config import ClipConfig
from tests.mmtool.test_train_loop import in_process  # noqa: F401 - a fixture


def test_report_to_is_a_list_in_the_yaml(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  report_to: [tensorboard, wandb, mlflow]\n  tracker_project: emoji\n")
    cfg = load_config(ClipConfig, tmp_path / "run.yaml")
    assert cfg.train.report_to == ["tensorboard", "wandb", "mlflow"] and cfg.train.tracker_project == "emoji"
    assert load_config(ClipConfig, None).train.report_to == ["tensorboard"]  # what every run did before
    assert load_config(ClipConfig, None, ["train.report_to=[]"]).train.report_to == []


def test_an_unknown_tracker_fails_in_one_line_with_the_closest_name(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  report_to: [tensorbord]\n")
    with pytest.raises(MmtoolError) as caught:
        load_config(ClipConfig, tmp_path / "run.yaml")
    assert str(caught.value) == (f"{tmp_path / 'run.yaml'}.train: report_to: unknown tracker 'tensorbord' (did you "
                                 "mean 'tensorboard'? known: tensorboard, wandb, mlflow)")
    with pytest.raises(MmtoolError, match=r"expected a list, got 'wandb'"):
        load_config(ClipConfig, None, ["train.report_to=wandb"])


@pytest.mark.parametrize("name, package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_library_names_the_extra(monkeypatch, name, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(MmtoolError) as caught:
        check_trackers(["tensorboard", name])
    assert str(caught.value) == f"train.report_to: {name} needs the {package} package: pip install 'mmtool[trackers]'"


def test_a_missing_library_stops_the_run_before_its_model_is_built(in_process, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MmtoolError, match=r"^train.report_to: wandb needs the wandb package"):
        start_run(TrainSettings(report_to=["wandb"]), 8, tmp_path / "run", resume=False)
    assert not (tmp_path / "run").exists()


def test_other_ranks_open_no_tracker(monkeypatch, tmp_path):
    def refuse(*args):
        raise AssertionError("a tracker was opened on a rank other than 0")

    monkeypatch.setattr("mmtool.run_log.Trackers", refuse)
    log = RunLog(tmp_path / "run", 4, enabled=False, report_to=["tensorboard", "wandb", "mlflow"])
    log.write(1, "train", {"loss": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()


class Flaky:
    """A tracker whose server goes away at its second record."""
    run_id, logged, closed = None, [], []

    def __init__(self, *args):
        pass

    def log(self, step, split, metrics):
        if len(self.logged) == 1:
            raise ConnectionError("connection refused\nmore detail")
        self.logged.append(step)

    def close(self):
        self.closed.append(True)


def test_a_tracker_that_fails_is_dropped_and_training_goes_on(monkeypatch, tmp_path):
    monkeypatch.setattr("mmtool.trackers.tracker_class", lambda name: Flaky)
    said = []
    trackers = Trackers(["wandb"], tmp_path, "tests", {}, say=said.append)
    for step in (1, 2, 3):
        trackers.log(step, "train", {"loss": 1.0})
    trackers.close()
    assert Flaky.logged == [1] and Flaky.closed == []
    assert said == ["train.report_to: wandb stopped at step 2 (ConnectionError: connection refused); metrics.jsonl "
                    "has every record"]
