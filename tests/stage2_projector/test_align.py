"""Stage 2 with tiny parts: patch features, projector, placeholder merging, and `mmtool align` end to end."""
import copy
import json

import pytest
import torch
from transformers import CLIPVisionModel

from mmtool.config import from_dict
from mmtool.errors import MmtoolError
from mmtool.export.hf_clip import vision_tower_to_hf
from mmtool.optim import build_param_groups
from stage1_clip.checkpoint import load_clip
from stage2_projector.chat_format import IGNORE_INDEX
from stage2_projector.checkpoint import build_vlm, check_vision, load_vlm
from stage2_projector.config import AlignConfig, ModelConfig
from stage2_projector.evaluate import evaluate_answer_loss
from stage2_projector.features import PatchFeatures
from stage2_projector.llm import add_image_token
from stage2_projector.projector import build_projector
from stage2_projector.train import make_val_set, val_batches
from tests.stage1_clip.test_folded_trunk import random_statistics_tower
from tests.stage1_clip.test_train_e2e import mmtool
from tests.helpers.tiny_vlm import CORPUS, chatml_tokenizer, save_tiny_clip, save_tiny_llm, tiny_llama


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlm")
    clip_path = save_tiny_clip(root / "clip.pt")
    llm = add_image_token(tiny_llama(len(chatml_tokenizer(CORPUS)) + 1), chatml_tokenizer(CORPUS), "tiny")
    return build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path))), clip_path, llm=llm), clip_path


def test_vit_patch_features_match_transformers_clip_hidden_states(tiny_vlm):
    bundle, clip_path = tiny_vlm
    clip = load_clip(clip_path)
    config, state = vision_tower_to_hf(clip.model.vision, clip.config.model.vision)
    reference = CLIPVisionModel(config).eval()
    reference.load_state_dict(state)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = reference(pixel_values=images, output_hidden_states=True).hidden_states
        ours = bundle.model.vision(images)  # default layer -2, patch tokens only
    assert ours.shape == (2, 16, 32) and bundle.num_image_tokens == 16
    torch.testing.assert_close(ours, hidden[-2][:, 1:], atol=1e-5, rtol=1e-5)


def test_efficientnet_patch_features_end_in_the_packages_feature_map(tmp_path):
    clip = load_clip(save_tiny_clip(tmp_path / "effnet.pt", vision_type="efficientnet_lite0"))
    tower = clip.model.vision.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        head = PatchFeatures(tower, "efficientnet_lite0", -1)(images)  # [2, 4, 1280]
        reference = tower.net.extract_features(images * tower.input_scale + tower.input_shift)  # [2, 1280, 2, 2]
        last_block = PatchFeatures(tower, "efficientnet_lite0", -2)
    torch.testing.assert_close(head, reference.flatten(2).transpose(1, 2))
    assert last_block.width == 320 and last_block.num_tokens(64) == 4
    with pytest.raises(MmtoolError, match="feature_layer 18"):
        PatchFeatures(tower, "efficientnet_lite0", 18)


def test_the_folded_inference_copy_gives_every_features_token_of_the_tower():
    tower = random_statistics_tower()  # float64, BatchNorm far from the identity
    embedding = torch.nn.Linear(1280, 16).double()
    features = PatchFeatures(tower, "efficientnet_lite0", -2, embedding, embed_dim=16, grid=2).train()
    copied = features.inference_copy()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copied.modules())
    assert features.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in features.modules())
    images = torch.randn(3, 3, 48, 48, dtype=torch.float64)  # [B, 3, H, W]
    with torch.no_grad():
        torch.testing.assert_close(copied(images), features.eval()(images), atol=1e-10, rtol=0)  # [B, 5, 320 + 16]


def test_projector_depths_and_names():
    assert isinstance(build_projector("linear", 8, 4), torch.nn.Linear)
    mlp = build_projector("mlp3x_gelu", 8, 4)
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert mlp[0].in_features == 8 and mlp[4].out_features == 4
    with pytest.raises(MmtoolError, match="unknown projector 'mlp2x_relu'"):
        build_projector("mlp2x_relu", 8, 4)


def test_default_param_groups_train_only_the_projector(tiny_vlm):
    bundle, _ = tiny_vlm
    model = copy.deepcopy(bundle.model)
    groups = build_param_groups(model, 1e-3, 0.0, AlignConfig().train.param_groups)
    trained = {name for group in groups for name in group["names"]}
    assert trained == {name for name, _ in model.named_parameters() if name.startswith("projector.")}
    assert trained and not any(p.requires_grad for p in model.vision.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())


def test_image_features_replace_placeholders_and_loss_counts_answers_only(tiny_vlm):
    bundle, _ = tiny_vlm
    model, image_id = bundle.model.eval(), bundle.llm.image_token_id
    n = bundle.num_image_tokens
    # Two samples with their images at different offsets, right-padded.
    ids = torch.tensor([[5, 6] + [image_id] * n + [7, 8, 9, 0], [5] + [image_id] * n + [10, 11, 12, 13, 14]])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, -4:-1], labels[1, -3:] = ids[0, -4:-1], ids[1, -3:]
    attention = torch.ones_like(ids)
    attention[0, -1] = 0  # padding
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        merged = model.embed(ids, images)
        features = model.projector(model.vision(images))  # [2, n, 64]
        table = model.llm.get_input_embeddings().weight
        expected = torch.zeros_like(merged)
        for b in range(2):
            seen = 0
            for t, token in enumerate(ids[b].tolist()):
                if token == image_id:
                    expected[b, t], seen = features[b, seen], seen + 1
                else:
                    expected[b, t] = table[token]
        torch.testing.assert_close(merged, expected)

        out = model(ids, attention, images, labels)
        logits = model.llm(inputs_embeds=expected, attention_mask=attention).logits
        terms = [-torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]]
                 for b in range(2) for t in range(1, ids.shape[1]) if labels[b, t] != IGNORE_INDEX]
    assert int(out["tokens"]) == len(terms) == 6
    torch.testing.assert_close(out["loss"].double(), torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)
    with pytest.raises(MmtoolError, match=f"{2 * n - 3} image placeholder tokens for 2 image"):
        model.embed(ids[:, 3:], images)


@pytest.mark.slow
def test_align_trains_only_the_projector_and_the_checkpoint_reloads(emoji_shards, tmp_path):
    clip_path, llm_dir = save_tiny_clip(tmp_path / "clip.pt"), save_tiny_llm(tmp_path / "llm")
    out = tmp_path / "run"
    sets = [f"data.train={emoji_shards}/train-*.tar", f"data.val={emoji_shards}/val-*.tar", "data.batch_size=8",
            "data.val_samples=24", "train.max_steps=20", "train.lr=1e-2", "train.warmup_steps=2", "train.log_every=1",
            "train.deepspeed=configs/deepspeed/fp32.json"]
    mmtool("align", "--vision", clip_path, "--llm", llm_dir, "--out", out, *[a for s in sets for a in ("--set", s)])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    # A random frozen LLM leaves the projector little to work with (test_align_smollm2 checks real learning).
    assert len(losses) == 20 and max(losses[-5:]) < losses[0], losses

    bundle = load_vlm(out)
    record = bundle.record
    assert record["vision"]["feature_layer"] == -2 and record["vision"]["image_size"] == 32
    # 4x4 patches + CLIP's embedding token (configs/align/emoji.yaml sets model.clip_embedding_token)
    assert record["vision"]["num_image_tokens"] == 17 and len(record["vision"]["sha256"]) == 64
    assert record["llm"]["spec"] == str(llm_dir) and record["llm"]["image_token_id"] == 300
    # The frozen tower comes back bit for bit; the reloaded model reproduces the run's own val loss.
    clip_vision = load_clip(clip_path).model.vision.state_dict()
    for name, tensor in bundle.model.vision.tower.state_dict().items():
        assert torch.equal(tensor, clip_vision[name]), name
    cfg = from_dict(AlignConfig, record["align"], where="align")
    cfg.data.val = f"{emoji_shards}/val-*.tar"
    val_set = make_val_set(cfg, 32)
    metrics = evaluate_answer_loss(bundle.model, val_batches(bundle, cfg, val_set, torch.device("cpu"), torch.float32))
    saved = json.loads((out / "eval.json").read_text())
    assert metrics["answer_tokens"] == saved["answer_tokens"]
    assert metrics["answer_loss"] == pytest.approx(saved["answer_loss"], rel=1e-5)

    other_llm = save_tiny_llm(tmp_path / "other_llm", seed=1)
    with pytest.raises(MmtoolError, match="fingerprint"):
        load_vlm(out, str(other_llm))
    with pytest.raises(MmtoolError, match="aligned on vision checkpoint"):
        check_vision(record, save_tiny_clip(tmp_path / "other.pt", seed=1), "stage 3")
    check_vision(record, clip_path, "stage 3")
