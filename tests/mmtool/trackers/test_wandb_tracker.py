"""wandb (offline): the run is named after the run folder, keeps its files in it, and a resumed run continues the
same wandb run."""
import json

from mmtool.trackers import Trackers
from tests.helpers.trackers import offline_trackers  # noqa: F401 - a fixture
from tests.helpers.wandb_offline import history, offline_logs


def test_a_resumed_run_continues_the_same_wandb_run(offline_trackers, tmp_path):  # noqa: F811
    out = tmp_path / "runs" / "clip"
    out.mkdir(parents=True)
    first = Trackers(["wandb"], out, "tests", {"train": {"lr": 0.1}})
    assert first.open["wandb"].run.name == "runs/clip"
    first.log(1, "train", {"loss": 2.0, "note": "text is not a series"})
    first.close()
    run_id = json.loads((out / "trackers.json").read_text())["wandb"]

    second = Trackers(["wandb"], out, "tests", {"train": {"lr": 0.1}})
    second.log(2, "val", {"image_to_text_R@1": 0.25})
    second.close()
    assert second.open["wandb"].run_id == run_id
    logs = offline_logs(out)
    assert [log.name for log in logs] == [f"run-{run_id}.wandb"] * 2
    assert [history(log) for log in logs] == [{"train/loss": {1: 2.0}}, {"val/image_to_text_R@1": {2: 0.25}}]
