"""--overwrite clears every file a training run writes under --out: the plot, the trackers' local files, and
whatever a new kind of output adds (checked against a real run), never the user's own files."""
import pytest

from mmtool.train_loop import train
from mmtool.train_state import claim_out
from tests.helpers.trackers import offline_trackers  # noqa: F401 - a fixture
from tests.mmtool.test_train_loop import TinyStage, in_process, settings  # noqa: F401 - a fixture


def test_overwrite_removes_the_old_runs_plot_and_tracker_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "plot.png").write_bytes(b"the old run's curves")
    (tmp_path / "trackers.json").write_text('{"wandb": "old"}')  # else the new run would continue the old ones
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("the user's own file")
    claim_out(tmp_path, resume=False, overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_overwrite_leaves_nothing_of_a_real_run(in_process, offline_trackers, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    run.mkdir()
    stage = TinyStage()
    train(stage, settings(report_to=["tensorboard", "wandb", "mlflow"], save_every=4), stage.batch_size, run,
          config={}, resume=False)
    written = {path.name for path in run.iterdir()}
    assert {"plot.png", "metrics.jsonl", "tensorboard", "wandb", "trackers.json", "state", "config.json"} <= written
    (run / "notes.txt").write_text("the user's own file")
    (run / "tiny.pt").unlink()  # TinyStage's checkpoint, not a name mmtool's stages write
    claim_out(run, resume=False, overwrite=True)
    assert sorted(path.name for path in run.iterdir()) == ["notes.txt"]
