"""--overwrite clears every file a training run writes under --out, never the user's own files."""
from mmtool.train_state import claim_out


def test_overwrite_removes_the_old_runs_plot(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "plot.png").write_bytes(b"the old run's curves")  # would stand for the new run where it draws none
    (tmp_path / "notes.txt").write_text("the user's own file")
    claim_out(tmp_path, resume=False, overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
