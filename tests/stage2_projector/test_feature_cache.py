"""The frozen tower's feature cache: the same loss as the live tower, a new folder for a new tower / layer /
resolution / precision, atomic files, and only for a frozen tower."""
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmtool.cpu_features import KEEP_SLOW_BF16
from mmtool.optim import ParamGroupRule
from stage2_projector.checkpoint import build_vlm
from stage2_projector.config import AlignConfig, ModelConfig, TrainConfig
from stage2_projector.data import encode_caption_batch
from stage2_projector.feature_cache import FeatureCache, image_key, open_feature_cache
from stage2_projector.llm import add_image_token
from stage3_llm.train import finetune
from tests.stage3_llm.test_finetune import config, parts, records  # noqa: F401 (parts is a fixture)
from tests.helpers.tiny_vlm import CORPUS, chatml_tokenizer, save_tiny_clip, tiny_llama

INSTRUCTIONS = ["Describe this image briefly."]
CAPTIONS, KEYS = ["a red apple", "green heart", "a rocket in the sky"], ["a", "b", "c"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    clip_path = save_tiny_clip(tmp_path_factory.mktemp("cache") / "clip.pt")
    llm = add_image_token(tiny_llama(len(chatml_tokenizer(CORPUS)) + 1), chatml_tokenizer(CORPUS), "tiny")
    return build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path))), clip_path, llm=llm)


def loss(bundle, images: torch.Tensor, packed: bool = True) -> torch.Tensor:
    batch = encode_caption_batch(bundle.tokenizer, CAPTIONS, KEYS, INSTRUCTIONS, bundle.num_image_tokens, 64,
                                 packed=packed)
    with torch.no_grad():
        return bundle.model(batch["input_ids"], batch["attention_mask"], images, batch["labels"],
                            batch.get("position_ids"))["loss"]


def cache_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and path.name != "namespace.json"]


def test_cached_features_give_the_live_loss(bundle, tmp_path):
    model = bundle.model.eval()
    images = torch.randn(3, 3, 32, 32)  # [B, 3, H, W]
    live = loss(bundle, images)
    model.feature_cache = cache = open_feature_cache(model, bundle.record, "auto", tmp_path, TrainConfig())
    try:
        first = loss(bundle, images)  # misses: the tower runs, its rows are stored
        assert (cache.hits, cache.misses, cache.entries) == (0, 3, 3)
        with torch.no_grad():  # the tower is not called on a hit: break it to prove it
            saved = [p.clone() for p in model.vision.parameters()]
            for p in model.vision.parameters():
                p.fill_(float("nan"))
            second = loss(bundle, images)
            for p, value in zip(model.vision.parameters(), saved):
                p.copy_(value)
        assert (cache.hits, cache.misses) == (3, 3)
        features = model.vision(images)
        third = loss(bundle, features)  # the features-in path the cache feeds
    finally:
        model.feature_cache = None
    torch.testing.assert_close(first, live, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(second, live, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(third, live, atol=1e-6, rtol=1e-6)
    files = cache_files(tmp_path / "feature_cache")
    assert sorted(f.stem for f in files) == sorted(image_key(image) for image in images)  # no temporary files left
    assert cache.stats()["feature_cache_mb"] == pytest.approx(sum(f.stat().st_size for f in files) / 2**20)
    reopened = open_feature_cache(model, bundle.record, "auto", tmp_path, TrainConfig())
    assert reopened.folder == cache.folder and reopened.entries == 3  # the size is read back from disk


def test_a_changed_tower_layer_grid_resolution_or_precision_uses_another_folder(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv(KEEP_SLOW_BF16, "1")  # the bf16 config keeps bf16 on every CPU
    model, record, train = bundle.model, bundle.record, TrainConfig()
    folder = open_feature_cache(model, record, "auto", tmp_path, train).folder
    other_layer = {**record, "vision": {**record["vision"], "feature_layer": -1}}
    other_size = {**record, "vision": {**record["vision"], "image_size": 64}}
    pooled = {**record, "vision": {**record["vision"], "token_grid": 2}}
    fp32 = replace(train, deepspeed="configs/deepspeed/fp32.json")
    others = [open_feature_cache(model, other_layer, "auto", tmp_path, train).folder,
              open_feature_cache(model, pooled, "auto", tmp_path, train).folder,
              open_feature_cache(model, other_size, "auto", tmp_path, train).folder,
              open_feature_cache(model, record, "auto", tmp_path, fp32).folder]
    weight = next(model.vision.parameters())
    with torch.no_grad():
        weight[0].add_(1e-3)
        others.append(open_feature_cache(model, record, "auto", tmp_path, train).folder)
        weight[0].sub_(1e-3)
    assert open_feature_cache(model, record, "auto", tmp_path, train).folder == folder
    assert len({folder, *others}) == 6


def test_a_changed_tower_is_not_served_the_old_features(bundle, tmp_path):
    model = bundle.model.eval()
    images = torch.randn(3, 3, 32, 32)
    model.feature_cache = open_feature_cache(model, bundle.record, "auto", tmp_path, TrainConfig())
    try:
        before = loss(bundle, images)
        weight = next(model.vision.parameters())
        with torch.no_grad():
            weight.mul_(1.5)
            model.feature_cache = open_feature_cache(model, bundle.record, "auto", tmp_path, TrainConfig())
            changed = loss(bundle, images)
            model.feature_cache = None
            live = loss(bundle, images)
            weight.div_(1.5)
    finally:
        model.feature_cache = None
    torch.testing.assert_close(changed, live, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(changed, before, atol=1e-4)


def test_no_cache_for_a_tower_that_learns_or_when_switched_off(bundle, tmp_path):
    learning = TrainConfig(param_groups=[ParamGroupRule(pattern=r"^llm\.", lr=0.0)])
    assert open_feature_cache(bundle.model, bundle.record, "auto", tmp_path, learning) is None
    assert open_feature_cache(bundle.model, bundle.record, None, tmp_path, TrainConfig()) is None
    assert not (tmp_path / "feature_cache").exists()


def test_an_explicit_folder_and_pixel_keys(tmp_path):
    cache = FeatureCache(tmp_path / "elsewhere", {"tower_sha256": "x"})
    assert cache.folder.parent == tmp_path / "elsewhere" and (cache.folder / "namespace.json").is_file()
    image = torch.zeros(3, 4, 4)
    assert image_key(image) != image_key(image.clone().index_fill_(1, torch.tensor([0]), 1e-7))
    assert image_key(image) != image_key(torch.zeros(3, 2, 8))


@pytest.mark.slow
def test_finetune_on_cached_features_and_packed_rows_matches_a_padded_live_run(parts, tmp_path):  # noqa: F811
    """Through the engine: the same train and val losses with the cache cold, warm, and without it (LoRA dropout
    off: its masks are drawn in the shape of the batch, padded or packed)."""
    steps, cache = ["train.max_steps=3", "model.lora.dropout=0.0"], tmp_path / "cache"
    finetune(config(parts, *steps, "data.packed=false", "data.feature_cache=null"), tmp_path / "live")
    finetune(config(parts, *steps, f"data.feature_cache={cache}"), tmp_path / "cold")
    finetune(config(parts, *steps, f"data.feature_cache={cache}"), tmp_path / "warm")
    live, cold, warm = (records(tmp_path / name, "train") for name in ("live", "cold", "warm"))
    for split in ("train", "val"):
        expected = [r.get("loss", r.get("answer_loss")) for r in records(tmp_path / "live", split)]
        for name in ("cold", "warm"):
            got = [r.get("loss", r.get("answer_loss")) for r in records(tmp_path / name, split)]
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), (split, name)
    assert "feature_cache_mb" not in live[-1]
    assert cold[-1]["feature_cache_hit_rate"] < 1 and warm[-1]["feature_cache_hit_rate"] == 1
    assert warm[-1]["feature_cache_mb"] == cold[-1]["feature_cache_mb"] > 0
