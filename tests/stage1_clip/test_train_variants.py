"""The other shipped CPU recipes train a few steps and give a loadable, self-contained checkpoint."""
import json

import pytest
import torch

from mmtool.cpu_features import fp16_missing_reason, fp16_supported
from stage1_clip.checkpoint import load_clip
from tests.stage1_clip.test_train_e2e import mmtool, train_losses

FP16 = fp16_supported()  # DeepSpeed's answer for this machine's CPU (scripts/cpu_features.py prints why)

pytestmark = pytest.mark.slow

SMALL = ["data.batch_size=32", "train.max_steps=3", "train.log_every=1", "data.workers=1", "train.warmup_steps=1",
         "model.text.context_length=24"]


def run(config: str, shards, out, *extra):
    sets = [f"data.train={shards}/train-*.tar", f"data.val={shards}/val-*.tar", *SMALL, *extra]
    mmtool("pretrain-clip", "--config", config, "--out", out, *[a for s in sets for a in ("--set", s)])
    assert sorted(train_losses(out)) == [1, 2, 3]
    return json.loads((out / "eval.json").read_text())


def test_siglip_learns_its_bias_and_scale(emoji_shards, tmp_path):
    """Through the tiled loss (tiles of 12 over a batch of 32), which must train like the dense one."""
    run("configs/clip/tiny_vit_siglip.yaml", emoji_shards, tmp_path, "model.vision.layers=2", "model.text.layers=2",
        "loss.tile_size=12")
    bundle = load_clip(tmp_path / "clip.pt")
    assert bundle.model.logit_bias is not None
    assert bundle.model.logit_bias.item() != pytest.approx(-10.0, abs=1e-6)
    assert bundle.model.logit_scale.item() != pytest.approx(2.302585, abs=1e-6)


def test_resnet_tower(emoji_shards, tmp_path):
    run("configs/clip/tiny_resnet.yaml", emoji_shards, tmp_path, "model.text.layers=2")
    assert load_clip(tmp_path / "clip.safetensors").config.model.vision.type == "resnet"


def test_lit_locked_pretrained_text_tower_with_mlp_heads(emoji_shards, tmp_path):
    """The bundled MiniLM stays exactly as loaded (lr 0) under an MLP head; the checkpoint rebuilds both without the
    package's files."""
    from mmtool.pretrained import resolve_model_dir
    from stage1_clip.hf_text import HFTextTower

    run("configs/clip/lit_minilm.yaml", emoji_shards, tmp_path, "model.vision.layers=2", "model.head=mlp")
    bundle = load_clip(tmp_path / "clip.pt")
    assert bundle.config.model.head == "mlp" and isinstance(bundle.model.text_projection, torch.nn.Sequential)
    original = HFTextTower.from_pretrained(resolve_model_dir("minilm")).state_dict()
    trained = bundle.model.text.state_dict()
    assert original.keys() == trained.keys()
    for name, tensor in original.items():
        assert torch.equal(trained[name], tensor), name
    ids, mask = bundle.tokenize(["a grinning face"])
    assert ids[0, 0].item() == 101  # BERT's [CLS]: the tower's own tokenizer travelled with the checkpoint


@pytest.mark.skipif(not FP16, reason="" if FP16 else fp16_missing_reason())
def test_fp16_with_dynamic_loss_scaling(emoji_shards, tmp_path):
    run("configs/clip/tiny_vit.yaml", emoji_shards, tmp_path, "train.deepspeed=configs/deepspeed/zero2_fp16.json",
        "model.vision.layers=2", "model.text.layers=2")
    losses = train_losses(tmp_path)
    assert all(0 < loss < 10 for loss in losses.values()), losses
    state = torch.load(tmp_path / "clip.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values())


@pytest.mark.skipif(FP16, reason="this machine trains fp16: the refusal is for machines that cannot")
def test_fp16_config_is_refused_in_one_line_where_the_cpu_has_no_fp16(emoji_shards, tmp_path):
    result = mmtool("pretrain-clip", "--config", "configs/clip/tiny_vit.yaml", "--out", tmp_path / "run",
                    "--set", f"data.train={emoji_shards}/train-*.tar", "--set", "data.val=null",
                    "--set", "train.deepspeed=configs/deepspeed/zero2_fp16.json", check=False)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and "zero2_fp16.json: fp16 is enabled but" in message[0], result.stderr[-2000:]
    assert "avx512_fp16" in message[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "clip.pt").exists()
