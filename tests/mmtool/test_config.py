from pathlib import Path

import pytest
import torch

from mmtool.config import load_config
from mmtool.errors import MmtoolError
from stage1_clip.config import ClipConfig

CONFIGS = sorted(Path("configs/clip").glob("*.yaml"))


def test_every_shipped_clip_config_loads():
    assert CONFIGS
    for path in CONFIGS:
        cfg = load_config(ClipConfig, path)
        assert cfg.model.embed_dim > 0, path


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(ClipConfig, "configs/clip/tiny_vit.yaml",
                      ["train.lr=1e-4", "model.vision.layers=2", "data.val=null", "loss.type=siglip"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.vision.layers == 2
    assert cfg.data.val is None
    assert cfg.loss.type == "siglip"


def test_param_group_rules_load_as_dataclasses():
    cfg = load_config(ClipConfig, "configs/clip/lit_minilm.yaml")
    assert cfg.train.param_groups[0].pattern == r"^text\." and cfg.train.param_groups[0].lr == 0.0


@pytest.mark.parametrize("override, culprit", [
    ("train.lrr=1", "'lrr'"),
    ("model.vision.layers=two", "model.vision.layers"),
    ("train.lr=fast", "train.lr"),
    ("nonsense", "key=value"),
])
def test_bad_overrides_name_the_culprit(override, culprit):
    with pytest.raises(MmtoolError, match=culprit.replace(".", r"\.")) as err:
        load_config(ClipConfig, "configs/clip/tiny_vit.yaml", [override])
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(MmtoolError, match="not found"):
        load_config(ClipConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(MmtoolError, match="bad.yaml"):
        load_config(ClipConfig, bad)


@pytest.mark.parametrize("name, openai_params", [
    ("vit_b32", 151_277_313), ("vit_b16", 149_620_737), ("vit_l14", 427_616_513), ("rn50", 102_007_137)])
def test_large_configs_match_openai_clip_parameter_counts(name, openai_params):
    """With OpenAI's 49,408-token vocabulary, each config builds exactly the published architecture."""
    from stage1_clip.model import CLIP

    cfg = load_config(ClipConfig, f"configs/clip/{name}.yaml")
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = CLIP(cfg.model, cfg.loss, vocab_size=49_408)
    assert sum(p.numel() for p in model.parameters()) == openai_params
