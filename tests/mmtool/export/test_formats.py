"""`--format onnx` (onnxruntime vs torch, 1e-4, dynamic batch) and `--format safetensors` (rebuilt by mmtool,
ResNet towers included), plus the CLI's errors for towers the hf format cannot carry."""
import pytest
import torch
from typer.testing import CliRunner

from mmtool.cli import app
from mmtool.data.reading.loader import make_eval_set, resolve_shards
from mmtool.errors import MmtoolError
from mmtool.export.onnx import OnnxClip
from mmtool.export.safetensors_folder import load_clip_folder, load_image_encoder
from stage1_clip.checkpoint import load_clip
from stage1_clip.config import VisionConfig
from tests.helpers.tiny_clip import write_tiny_clip


@pytest.fixture(scope="module")
def val_set(emoji_shards):
    return make_eval_set(resolve_shards(str(emoji_shards / "val-*.tar")), 32)


def export(*args) -> None:
    result = CliRunner().invoke(app, list(map(str, args)))
    if result.exception:
        raise result.exception
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_onnx_clip_matches_torch_with_any_batch(tiny_clip_checkpoint, val_set, tmp_path):
    export("export-clip", tiny_clip_checkpoint, "--format", "onnx", "--out", tmp_path / "onnx")
    bundle, runtime = load_clip(tiny_clip_checkpoint), OnnxClip(tmp_path / "onnx")
    for batch in (1, 7, 33):  # exported with batch 2: the batch dimension is dynamic
        images, captions = val_set["image"][:batch], val_set["caption"][:batch]
        with torch.no_grad():
            expected_images = bundle.model.encode_image(images)  # [B, D]
            expected_texts = bundle.model.encode_text(*bundle.tokenize(captions))  # [B, D]
        assert torch.allclose(runtime.encode_images(images), expected_images, atol=1e-4, rtol=0)
        assert torch.allclose(runtime.encode_texts(captions), expected_texts, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_onnx_vision_export_has_no_text_encoder(tiny_clip_checkpoint, tmp_path):
    export("export-vision", tiny_clip_checkpoint, "--format", "onnx", "--out", tmp_path / "onnx")
    runtime = OnnxClip(tmp_path / "onnx")
    assert runtime.encode_images(torch.zeros(3, 3, 32, 32)).shape == (3, 32)
    with pytest.raises(MmtoolError, match="export-clip"):
        runtime.encode_texts(["a cat"])


@pytest.mark.parametrize("vision,head", [
    (VisionConfig(type="vit", image_size=32, patch_size=8, width=64, layers=2, heads=4), "linear"),
    (VisionConfig(type="vit", image_size=32, patch_size=8, width=64, layers=2, heads=4), "mlp"),
    (VisionConfig(type="resnet", image_size=32, width=16, heads=2, stage_blocks=[1, 1, 1, 1]), "linear"),
], ids=["vit", "vit_mlp_head", "resnet"])
def test_safetensors_vision_rebuilds_the_same_encoder(emoji_shards, val_set, vision, head, tmp_path):
    checkpoint = write_tiny_clip(emoji_shards, tmp_path / "clip.pt", vision=vision, head=head)
    export("export-vision", checkpoint, "--format", "safetensors", "--out", tmp_path / "st")
    encoder, vision_cfg = load_image_encoder(tmp_path / "st")
    images = val_set["image"][:16]
    with torch.no_grad():
        assert torch.equal(encoder(images), load_clip(checkpoint).model.encode_image(images))
    assert vision_cfg.type == vision.type
    if vision.type == "resnet" or head == "mlp":
        refusal = "'resnet' tower" if vision.type == "resnet" else "'mlp' head"
        with pytest.raises(MmtoolError, match=f"{refusal} has no Hugging Face CLIP.*--format safetensors"):
            export("export-vision", checkpoint, "--format", "hf", "--out", tmp_path / "hf")
        assert not (tmp_path / "hf").exists()


def test_safetensors_clip_rebuilds_both_towers(tiny_clip_checkpoint, val_set, tmp_path):
    export("export-clip", tiny_clip_checkpoint, "--format", "safetensors", "--out", tmp_path / "st")
    rebuilt, original = load_clip_folder(tmp_path / "st"), load_clip(tiny_clip_checkpoint)
    captions = val_set["caption"][:8]
    with torch.no_grad():
        assert torch.equal(rebuilt.model.encode_text(*rebuilt.tokenize(captions)),
                           original.model.encode_text(*original.tokenize(captions)))
        assert torch.equal(rebuilt.model.encode_image(val_set["image"][:8]),
                           original.model.encode_image(val_set["image"][:8]))


def test_export_refuses_unknown_format_and_a_non_empty_out(tiny_clip_checkpoint, tmp_path):
    with pytest.raises(MmtoolError, match="--format 'tflite': unknown"):
        export("export-vision", tiny_clip_checkpoint, "--format", "tflite", "--out", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(MmtoolError, match="already exists and is not empty"):
        export("export-vision", tiny_clip_checkpoint, "--format", "safetensors", "--out", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
