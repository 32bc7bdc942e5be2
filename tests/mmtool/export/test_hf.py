"""`--format hf`: transformers' CLIP models give mmtool's embeddings (fp32, 1e-5) on real emoji and captions."""
import io
from collections import Counter
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

from mmtool.data.reading.images import eval_transform, load_image
from mmtool.data.reading.loader import make_eval_set, resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.errors import MmtoolError
from mmtool.export.hf_clip import vision_tower_to_hf
from mmtool.export.hf_folder import export_clip_hf, export_vision_hf
from stage1_clip.checkpoint import load_clip
from stage1_clip.config import VisionConfig
from tests.helpers.tiny_clip import write_tiny_clip


@pytest.fixture(scope="module")
def val_set(emoji_shards, tiny_clip_checkpoint):
    bundle = load_clip(tiny_clip_checkpoint)
    return make_eval_set(resolve_shards(str(emoji_shards / "val-*.tar")), bundle.config.model.vision.image_size)


@pytest.fixture(scope="module")
def hf_clip_dir(tiny_clip_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf_clip"
    export_clip_hf(load_clip(tiny_clip_checkpoint), tiny_clip_checkpoint, out)
    return out


def test_vision_model_with_projection_matches_mmtool(tiny_clip_checkpoint, val_set, tmp_path):
    bundle = load_clip(tiny_clip_checkpoint)
    export_vision_hf(bundle, tiny_clip_checkpoint, tmp_path / "vision")
    hf = CLIPVisionModelWithProjection.from_pretrained(tmp_path / "vision").eval()
    images = val_set["image"][:48]  # [B, 3, H, W] real emoji through mmtool's eval transform
    with torch.no_grad():
        expected = bundle.model.encode_image(images)  # [B, D]
        got = F.normalize(hf(pixel_values=images).image_embeds, dim=-1)  # [B, D]
    assert images.shape[0] == 48 and torch.allclose(got, expected, atol=1e-5, rtol=0)
    manifest = json.loads((tmp_path / "vision" / "mmtool_export.json").read_text())
    assert manifest["kind"] == "vision" and manifest["image_size"] == 32


def test_vision_hidden_states_match_for_llava(tiny_clip_checkpoint, val_set):
    """LLaVA reads hidden_states[-2]: every layer's states agree, not only the pooled output."""
    bundle = load_clip(tiny_clip_checkpoint)
    config, state = vision_tower_to_hf(bundle.model.vision, bundle.config.model.vision)
    hf = CLIPVisionModel(config).eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith('position_ids') for k in missing)
    images = val_set["image"][:8]
    with torch.no_grad():
        expected = bundle.model.vision.forward_hidden_states(images)
        got = hf(pixel_values=images, output_hidden_states=True).hidden_states
    assert len(got) == len(expected) == 3
    for ours, theirs in zip(expected, got):
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_clip_model_matches_mmtool_images_captions_and_logits(tiny_clip_checkpoint, val_set, hf_clip_dir):
    bundle = load_clip(tiny_clip_checkpoint)
    hf = CLIPModel.from_pretrained(hf_clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_clip_dir)
    captions = val_set["caption"][:48] + ["A RED   apple!", "", "x " * 40]  # case, spacing, empty, truncated
    images = val_set["image"][:len(captions)]
    ids, mask = bundle.tokenize(captions)
    hf_inputs = tokenizer(captions, padding="max_length", truncation=True, max_length=ids.shape[1], return_tensors="pt")
    assert torch.equal(hf_inputs["input_ids"], ids) and torch.equal(hf_inputs["attention_mask"], mask)
    with torch.no_grad():
        ours = bundle.model(images, ids, mask)
        theirs = hf(input_ids=hf_inputs["input_ids"], attention_mask=hf_inputs["attention_mask"], pixel_values=images)
    assert torch.allclose(F.normalize(theirs.text_embeds, dim=-1), ours["text_features"], atol=1e-5, rtol=0)
    assert torch.allclose(F.normalize(theirs.image_embeds, dim=-1), ours["image_features"], atol=1e-5, rtol=0)
    expected_logits = ours["logit_scale"] * ours["image_features"] @ ours["text_features"].T  # [B, B]
    assert torch.allclose(theirs.logits_per_image, expected_logits, atol=1e-4, rtol=0)


def test_tokenizer_reproduces_sentencepiece_ids_on_every_caption(emoji_shards, tiny_clip_checkpoint, hf_clip_dir):
    bundle = load_clip(tiny_clip_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(hf_clip_dir)
    captions = [c for s in parsed_samples(resolve_shards(str(emoji_shards / "*.tar")), Counter()) for c in s.captions]
    ids, _ = bundle.tokenize(captions)
    hf_ids = tokenizer(captions, padding="max_length", truncation=True, max_length=ids.shape[1],
                       return_tensors="pt")["input_ids"]
    assert len(captions) > 1000 and torch.equal(hf_ids, ids)


def test_image_processor_reproduces_eval_pixels(emoji_shards, hf_clip_dir):
    """Raw PNG bytes through the saved processor vs mmtool's decode + eval transform (transparency on white,
    128 px -> 32 px bicubic). The processor works on uint8 PIL images like mmtool, up to float rounding."""
    processor = AutoImageProcessor.from_pretrained(hf_clip_dir)
    samples = parsed_samples(resolve_shards(str(emoji_shards / "val-*.tar")), Counter())
    raws = [sample.image for _, sample in zip(range(40), samples)]
    expected = torch.stack([eval_transform(load_image(raw), 32) for raw in raws])  # [B, 3, 32, 32]
    got = processor(images=[Image.open(io.BytesIO(raw)) for raw in raws], return_tensors="pt")["pixel_values"]
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_resnet_tower_is_refused_with_a_pointer_to_safetensors(emoji_shards, tmp_path):
    resnet = VisionConfig(type="resnet", image_size=32, width=16, heads=2, stage_blocks=[1, 1, 1, 1])
    checkpoint = write_tiny_clip(emoji_shards, tmp_path / "rn.pt", vision=resnet)
    with pytest.raises(MmtoolError, match="resnet.*--format safetensors"):
        export_vision_hf(load_clip(checkpoint), checkpoint, tmp_path / "out")
    assert not Path(tmp_path / "out").exists()
