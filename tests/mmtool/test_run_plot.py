"""Run plots: the curves read from metrics.jsonl, a PNG at the end of training, `mmtool plot` over several runs."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmtool.cli import app
from mmtool.errors import MmtoolError
from mmtool.run_plot import plot_runs, read_curves, run_labels, series
from mmtool.train_loop import train
from tests.mmtool.test_train_loop import TinyStage, in_process, settings  # noqa: F401 - in_process is a fixture

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


def clip_like(folder: Path, scale: float = 1.0) -> Path:
    train_records = [{"step": s, "split": "train", "loss": scale * 5 / s, "lr": 1e-3 * s} for s in (1, 2, 3, 4)]
    val_records = [{"step": s, "split": "val", "image_to_text_R@1": 0.1 * s, "zero_shot_group_acc": 0.2}
                   for s in (2, 4)]
    return write_run(folder, train_records + val_records)


def test_curves_per_split_and_key_with_a_resumed_step_taking_the_later_record(tmp_path):
    run = write_run(tmp_path / "run", [
        {"step": 1, "split": "train", "loss": 4.0, "lr": 0.1}, {"step": 2, "split": "train", "loss": 3.0, "lr": 0.2},
        {"step": 2, "split": "val", "answer_loss": 2.5},
        {"step": 2, "split": "train", "loss": 2.9, "lr": 0.2},  # logged again after a resume
        {"step": 3, "split": "train", "loss": 2.0, "lr": 0.3}])
    curves = read_curves(run)
    assert series(curves["train"], "loss") == ([1, 2, 3], [4.0, 2.9, 2.0])
    assert series(curves["train"], "lr") == ([1, 2, 3], [0.1, 0.2, 0.3])
    assert series(curves["val"], "answer_loss") == ([2], [2.5])
    assert series(curves["val"], "image_to_text_R@1") == ([], [])


def test_bad_run_folders_fail_in_one_line(tmp_path):
    with pytest.raises(MmtoolError, match="no metrics.jsonl"):
        read_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1}\nnot json\n')
    with pytest.raises(MmtoolError, match=r"metrics\.jsonl:2: not a JSON record"):
        read_curves(tmp_path)


def test_labels_are_the_shortest_path_tails_that_differ(tmp_path):
    runs = [tmp_path / "e1" / "llava", tmp_path / "e2" / "llava", tmp_path / "base" / "clip"]
    assert run_labels(runs) == ["e1/llava", "e2/llava", "base/clip"]
    assert run_labels([tmp_path / "a"]) == ["a"]


def test_plot_writes_a_png(tmp_path):
    out = plot_runs([clip_like(tmp_path / "run")], tmp_path / "figures" / "run.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_the_plot_command_overlays_runs_or_writes_beside_one(tmp_path, monkeypatch):
    first, second = clip_like(tmp_path / "a" / "clip"), clip_like(tmp_path / "b" / "clip", scale=2.0)
    runner = CliRunner()
    result = runner.invoke(app, ["plot", str(first)])
    assert result.exit_code == 0, result.output
    assert (first / "plot.png").read_bytes().startswith(PNG_MAGIC)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["plot", str(first), str(second)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_MAGIC)


def test_training_ends_with_a_plot_beside_its_metrics(in_process, tmp_path):  # noqa: F811
    stage = TinyStage()
    train(stage, settings(), stage.batch_size, tmp_path, config={}, resume=False)
    assert (tmp_path / "metrics.jsonl").is_file()
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_MAGIC)
