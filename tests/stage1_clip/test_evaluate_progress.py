"""eval-clip shows bars over its embedding on a terminal (reaching their totals) and scores the same as without."""
import torch

from stage1_clip.checkpoint import load_clip
from stage1_clip.evaluate import evaluate_clip
from tests.helpers.terminal import Terminal
from tests.helpers.tiny_vlm import save_tiny_clip


def test_eval_bars_reach_their_totals_and_change_no_score(tmp_path, monkeypatch):
    bundle = load_clip(save_tiny_clip(tmp_path / "clip.pt"))
    size = bundle.config.model.vision.image_size
    torch.manual_seed(0)
    eval_set = {"image": torch.randn(10, 3, size, size), "caption": [f"emoji number {i}" for i in range(10)],
                "labels": {"group": ["a", "b"] * 5}}
    quiet = evaluate_clip(bundle.model, bundle.tokenize, eval_set, ["{}"], batch_size=4)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    shown = evaluate_clip(bundle.model, bundle.tokenize, eval_set, ["{}"], batch_size=4, show_progress=True)
    assert shown == quiet
    bars = terminal.getvalue()
    assert "embed images: 100%" in bars and "3/3" in bars, bars  # 10 images in batches of 4
    assert "embed captions: 100%" in bars, bars
