"""Stage 1's frozen-tower caches (stage1_clip/feature_cache.py): the cached path gives the live loss and gradients,
frozen BatchNorm keeps its statistics, freezing is read from the param groups, and a changed tower, cut point,
resolution or context length lands in a new folder and is recomputed."""
import copy
from dataclasses import replace

import pytest
import torch

from mmtool.feature_cache import SUFFIX, decode_entry
from mmtool.optim import ParamGroupRule, build_param_groups
from stage1_clip.config import LossConfig, ModelConfig, TextConfig, TrainConfig, VisionConfig
from stage1_clip.feature_cache import open_image_cache, open_text_cache
from stage1_clip.grad_cache import LOSS_INPUTS
from stage1_clip.loss import build_loss
from stage1_clip.model import CLIP

VISION = VisionConfig(type="efficientnet_lite0", pretrained=False, image_size=32)
TEXT = TextConfig(type="transformer", context_length=12, width=32, layers=1, heads=4)
VOCAB = 50
# The default recipe's rules (configs/clip/default.yaml): block 15 + head trained, the rest of both towers locked.
DEFAULT_RULES = [ParamGroupRule(r"^vision\.net\.(_blocks\.15|_conv_head|_bn1)\.", lr=1e-4),
                 ParamGroupRule(r"^vision\.", lr=0.0), ParamGroupRule(r"^text\.", lr=0.0)]


def lit_clip(rules=DEFAULT_RULES, vision=VISION, text=TEXT) -> tuple[CLIP, TrainConfig]:
    torch.manual_seed(0)
    model = CLIP(ModelConfig(embed_dim=16, vision=vision, text=text), LossConfig(), VOCAB)
    with torch.no_grad():  # BatchNorm statistics other than the init's, so eval mode matters
        for module in model.vision.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    train = TrainConfig(param_groups=list(rules))
    build_param_groups(model, train.lr, train.weight_decay, train.param_groups)  # lr 0 -> requires_grad False
    return model.train(), train


def batch(size: int = 6, image_size: int = 32):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(size, 3, image_size, image_size, generator=generator)  # [B, 3, H, W]
    ids = torch.randint(1, VOCAB, (size, TEXT.context_length), generator=generator)  # [B, T]
    return images, ids, torch.ones_like(ids)


def loss_and_grads(model: CLIP, images, ids, mask) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    torch.manual_seed(2)  # block 15's drop-connect draws the same on both paths
    outputs = model(images, ids, mask)
    loss = build_loss("clip")(*(outputs[name] for name in LOSS_INPUTS))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_cached_path_gives_the_live_loss_and_gradients(tmp_path):
    model, train = lit_clip()
    model.double()  # the cached trunk is a folded copy (EfficientNetLite0Tower.folded_copy): equal to rounding, which
    images, ids, mask = batch()  # 15's BatchNorm over 6 rows of a 1x1 map magnifies ~1e4-fold in float32
    inputs = images.double(), ids, mask
    live_loss, live_grads = loss_and_grads(model, *inputs)
    statistics = copy.deepcopy({k: v for k, v in model.vision.state_dict().items() if "running" in k})
    model.text_cache = open_text_cache(model, TEXT, tmp_path, train)
    model.image_cache = open_image_cache(model, VISION, tmp_path, train)
    assert model.image_cache.cut == 16  # stem + blocks 0..14
    for expected_misses in (6, 6):  # first pass computes and stores, second reads back
        loss, grads = loss_and_grads(model, *inputs)
        assert loss == pytest.approx(live_loss.item(), rel=1e-7)
        assert grads.keys() == live_grads.keys() and "vision.net._blocks.15._project_conv.weight" in grads
        for name, grad in grads.items():
            scale = live_grads[name].abs().max().item()  # this toy's BatchNorm biases get grads of ~1e6
            torch.testing.assert_close(grad, live_grads[name], rtol=0, atol=1e-7 * scale + 1e-9, msg=name)
        for cache in (model.text_cache.cache, model.image_cache.cache):
            assert cache.misses == expected_misses
    assert model.image_cache.cache.hits == model.text_cache.cache.hits == 6
    for name, value in model.vision.state_dict().items():  # frozen BatchNorm ran in eval mode in both paths
        if name in statistics and "_blocks.15." not in name and "_bn1" not in name:
            assert torch.equal(value, statistics[name]), name
    stats = model.image_cache.cache.stats()
    assert stats["image_cache_entries"] == 6 and stats["image_cache_hit_rate"] == 0.5 and stats["image_cache_mb"] > 0


def test_the_cached_trunk_is_the_feature_map_before_the_first_trained_block(tmp_path):
    model, train = lit_clip()
    cache = open_image_cache(model, VISION, tmp_path, train)
    images = batch()[0]
    cache.features(model.vision, images)
    stored = sorted(p for p in cache.cache.folder.rglob(f"*{SUFFIX}"))
    assert len(stored) == 6
    channels = model.vision.net._blocks[14]._bn2.num_features
    assert decode_entry(stored[0].read_bytes()).shape == (channels, 1, 1)  # 32 px: a 1x1 map


def test_freezing_is_read_from_the_param_groups(tmp_path):
    learning_text = [rule for rule in DEFAULT_RULES if rule.pattern != r"^text\."]
    model, train = lit_clip(learning_text)
    assert open_text_cache(model, TEXT, tmp_path, train) is None
    model, train = lit_clip([ParamGroupRule(r"^text\.", lr=0.0)])  # image tower all trained
    assert open_image_cache(model, VISION, tmp_path, train) is None
    model, train = lit_clip([ParamGroupRule(r"^vision\.", lr=0.0)])  # whole tower locked: its pooled output
    cache = open_image_cache(model, VISION, tmp_path, train)
    assert cache.cut is None
    assert cache.features(model.vision, batch()[0]).shape == (6, 1280)
    unlocked_14 = [ParamGroupRule(r"^vision\.net\._blocks\.1[45]\.", lr=1e-4)] + DEFAULT_RULES
    model, train = lit_clip(unlocked_14)
    assert open_image_cache(model, VISION, tmp_path, train).cut == 15


def test_a_changed_tower_cut_or_resolution_gets_a_new_folder_and_is_recomputed(tmp_path):
    model, train = lit_clip()
    images = batch()[0]
    first = open_image_cache(model, VISION, tmp_path, train)
    first.features(model.vision, images)
    assert open_image_cache(model, VISION, tmp_path, train).cache.folder == first.cache.folder
    with torch.no_grad():  # a trained stage after the cut does not touch the cached trunk
        model.vision.net._blocks[15]._project_conv.weight.mul_(2)
    assert open_image_cache(model, VISION, tmp_path, train).cache.folder == first.cache.folder
    with torch.no_grad():
        model.vision.net._blocks[3]._project_conv.weight.mul_(2)
    changed = open_image_cache(model, VISION, tmp_path, train)
    unlocked_14 = [ParamGroupRule(r"^vision\.net\._blocks\.1[45]\.", lr=1e-4)] + DEFAULT_RULES
    other_cut = open_image_cache(*lit_clip(unlocked_14)[:1], VISION, tmp_path, train=lit_clip(unlocked_14)[1])
    other_size = open_image_cache(*lit_clip()[:1], replace(VISION, image_size=64), tmp_path, train)
    folders = {first.cache.folder, changed.cache.folder, other_cut.cache.folder, other_size.cache.folder}
    assert len(folders) == 4
    changed.features(model.vision, images)
    assert changed.cache.misses == 6 and changed.cache.hits == 0  # recomputed with the new weights


def test_a_changed_text_tower_or_context_length_gets_a_new_folder(tmp_path):
    model, train = lit_clip()
    folder = open_text_cache(model, TEXT, tmp_path, train).cache.folder
    assert open_text_cache(model, replace(TEXT, context_length=16), tmp_path, train).cache.folder != folder
    with torch.no_grad():
        model.text.token_embedding.weight.add_(1)
    assert open_text_cache(model, TEXT, tmp_path, train).cache.folder != folder


def test_a_half_cached_batch_runs_the_tower_on_its_missing_rows_only(tmp_path):
    model, train = lit_clip()
    cache = open_text_cache(model, TEXT, tmp_path, train)
    _, ids, mask = batch()
    live = model.text(ids)  # [B, Wt]
    cache.features(model.text, ids[:3], mask[:3], uses_mask=False)
    seen = []
    tower = lambda tokens: seen.append(len(tokens)) or model.text(tokens)  # noqa: E731
    mixed = cache.features(tower, ids, mask, uses_mask=False)  # rows 0-2 cached, 3-5 computed
    assert seen == [3] and cache.cache.hits == 3 and cache.cache.misses == 6
    torch.testing.assert_close(mixed, live, rtol=1e-5, atol=1e-6)
    again = cache.features(tower, ids, mask, uses_mask=False)
    assert seen == [3] and cache.cache.hits == 9
    torch.testing.assert_close(again, live, rtol=1e-5, atol=1e-6)
