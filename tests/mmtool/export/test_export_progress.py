"""The export commands draw a bar on a terminal (read, write, model card) that reaches its total; nothing in logs."""
import io

import pytest

from mmtool.export.run import export
from tests.helpers.terminal import Terminal
from tests.helpers.tiny_vlm import save_tiny_clip


def last_bar(terminal: Terminal) -> str:
    return terminal.getvalue().split("\r")[-1]


@pytest.mark.parametrize("what", ["vision", "clip"])
def test_an_export_bar_reaches_its_total(tmp_path, monkeypatch, what):
    checkpoint = save_tiny_clip(tmp_path / "clip.pt")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    export(checkpoint, what, "safetensors", tmp_path / "out")
    shown = last_bar(terminal)
    assert shown.startswith(f"export-{what} safetensors: 100%") and "3/3" in shown and "done" in shown, shown
    assert "write safetensors" in terminal.getvalue() and "model card" in terminal.getvalue()
    assert (tmp_path / "out" / "README.md").is_file()


def test_an_export_into_a_log_draws_no_bar(tmp_path, monkeypatch):
    checkpoint = save_tiny_clip(tmp_path / "clip.pt")
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    export(checkpoint, "vision", "safetensors", tmp_path / "out")
    assert log.getvalue() == ""


@pytest.mark.slow
def test_the_export_llava_bar_reaches_its_total(tmp_path, monkeypatch):
    from mmtool.export.llava import export_llava_folder
    from tests.mmtool.export.test_llava import aligned_tiny

    checkpoint = aligned_tiny(tmp_path)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    folder, card = export_llava_folder(checkpoint, tmp_path / "hf")
    shown = last_bar(terminal)
    assert shown.startswith("export-llava: 100%") and "3/3" in shown and "done" in shown, shown
    assert "merge + write hf" in terminal.getvalue()
    assert (folder / "config.json").is_file() and card == tmp_path / "hf" / "README.md"
