"""Progress bars on long non-training steps: count, rate and ETA on a terminal, nothing in logs and pipes."""
import io
import json

from PIL import Image

from mmtool.data.building.jsonl import build_from_jsonl
from mmtool.progress import progress
from tests.helpers.terminal import Terminal


def test_a_terminal_gets_count_rate_and_eta(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert sum(progress(range(5), desc="render", unit="img")) == 10
    shown = terminal.getvalue().split("\r")[-1]
    assert "render: 100%" in shown and "5/5" in shown and "img/s" in shown and "<00:00" in shown


def test_a_log_or_pipe_gets_no_bar(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    assert list(progress(range(3))) == [0, 1, 2]
    assert log.getvalue() == ""


def test_a_data_builder_shows_its_bar(tmp_path, monkeypatch):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "a.png", "caption": "a red square"}) + "\n")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    build_from_jsonl(tmp_path / "pairs.jsonl", tmp_path / "shards")
    assert "pairs.jsonl: " in terminal.getvalue() and "line/s" in terminal.getvalue()


def test_eval_clip_shows_reading_its_eval_set(emoji_shards, monkeypatch):
    from mmtool.data.reading.loader import make_eval_set, resolve_shards

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    eval_set = make_eval_set(resolve_shards(str(emoji_shards / "val-*.tar")), 32)
    shown = terminal.getvalue().split("\r")[-1]
    assert f"read eval set: {len(eval_set['caption'])}img" in shown and "img/s" in shown


def test_a_step_bar_counts_named_steps_and_says_where_it_failed(monkeypatch):
    from mmtool.progress import StepBar

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    try:
        with StepBar("export", total=3) as bar:
            with bar.step("read"):
                pass
            with bar.step("write"):
                raise OSError("disk full")
    except OSError:
        pass
    shown = terminal.getvalue().split("\r")[-1]
    assert shown.startswith("export:  33%") and "1/3" in shown and "failed" in shown, shown
