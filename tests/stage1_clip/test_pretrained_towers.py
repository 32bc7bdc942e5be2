"""Image towers that start from pretrained weights: bundled ImageNet EfficientNet-Lite0, Hugging Face CLIP / SigLIP."""
import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import BertConfig, CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, \
    SiglipVisionModel

from mmtool.config import load_config
from mmtool.data.reading.images import CLIP_MEAN, CLIP_STD, eval_transform
from mmtool.errors import MmtoolError
from mmtool.optim import build_param_groups
from mmtool.pretrained import resolve_model_dir
from stage1_clip.checkpoint import load_clip, save_clip
from stage1_clip.config import ClipConfig, VisionConfig
from stage1_clip.efficientnet import WEIGHTS_FILE, EfficientNetLite0Tower
from stage1_clip.hf_text import HFTokenizerAdapter
from stage1_clip.hf_vision import HFVisionTower
from stage1_clip.model import CLIP
from stage1_clip.towers import build_vision_tower

EFFNET_CONFIG = "configs/clip/effnet_minilm.yaml"
UNLOCKED = r"^vision\.net\.(_blocks\.15|_conv_head|_bn1)\."
TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                patch_size=8)


def clip_normalise(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> what mmtool's loader feeds the towers."""
    return (pixels - torch.from_numpy(CLIP_MEAN).view(3, 1, 1)) / torch.from_numpy(CLIP_STD).view(3, 1, 1)


def imagenet_file() -> Path:
    return resolve_model_dir("efficientnet_lite0") / WEIGHTS_FILE


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLite0Tower:
    return EfficientNetLite0Tower(pretrained=True).eval()


# --- EfficientNet-Lite0 -------------------------------------------------------------------------------------------

def test_imagenet_weights_load_exactly(effnet):
    reference = torch.load(imagenet_file(), weights_only=True)
    state = effnet.net.state_dict()
    assert set(state) == set(reference) - {"_fc.weight", "_fc.bias"}  # the classifier is dropped
    for name, tensor in state.items():
        assert torch.equal(tensor, reference[name]), name
    assert sum(p.numel() for p in effnet.parameters()) == 4_652_008 - 1280 * 1000 - 1000
    assert effnet.output_width == 1280


def test_real_photo_gets_an_imagenet_building_label(effnet):
    """End to end (mmtool preprocessing, input affine, pooling) with the ImageNet classifier put back on top."""
    sklearn = importlib.util.find_spec("sklearn")
    if sklearn is None:
        pytest.skip("scikit-learn (which bundles the photo) is not installed")
    photo = Path(next(iter(sklearn.submodule_search_locations))) / "datasets" / "images" / "china.jpg"
    image = eval_transform(Image.open(photo).convert("RGB"), 224)  # [3, 224, 224], CLIP-normalised
    reference = torch.load(imagenet_file(), weights_only=True)
    with torch.no_grad():
        logits = effnet(image[None]) @ reference["_fc.weight"].T + reference["_fc.bias"]  # [1, 1000]
    assert logits.argmax().item() in {698, 442, 663}  # palace, bell cote, monastery (a Summer Palace pagoda)


def test_input_affine_maps_clip_normalisation_to_lite_normalisation(effnet):
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    lite = (pixels - 127 / 255) / (128 / 255)  # TF's (pixel - 127) / 128
    affine = clip_normalise(pixels) * effnet.input_scale + effnet.input_shift
    torch.testing.assert_close(affine, lite, rtol=0, atol=2e-6)
    assert effnet.lite_input(clip_normalise(pixels)).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # the tower's channels-last path gives the package's NCHW result
        expected = effnet.net.extract_features(lite).mean(dim=(2, 3))  # [2, 1280]
        torch.testing.assert_close(effnet(clip_normalise(pixels)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("size, grid", [(64, 2), (96, 3), (100, 4)])
def test_any_image_size_pools_to_1280(effnet, size, grid):
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert effnet.net.extract_features(images).shape == (2, 1280, grid, grid)
        assert effnet(images).shape == (2, 1280)


@pytest.mark.slow
def test_rebuilt_from_config_and_state_dict_gives_identical_outputs(effnet):
    trained = copy.deepcopy(effnet)
    trained.net._blocks[15]._bn2.running_mean.add_(0.5)  # differs from the ImageNet weights
    cfg = VisionConfig(type="efficientnet_lite0", pretrained=False)
    rebuilt = build_vision_tower(cfg, embed_dim=64)
    rebuilt.load_state_dict(trained.state_dict())  # strict: the input affine buffers travel too
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images), trained(images))


def test_grad_checkpointing_is_refused():
    with pytest.raises(MmtoolError, match="model.vision.grad_checkpointing"):
        build_vision_tower(VisionConfig(type="efficientnet_lite0", pretrained=False, grad_checkpointing=True), 64)


def test_a_fully_locked_tower_runs_in_eval_mode_inside_a_training_model():
    tower = EfficientNetLite0Tower(pretrained=False)
    tower.requires_grad_(False)
    tower.train()  # a fully locked tower once recursed into its own train() here
    assert not any(module.training for module in tower.net.modules()) and tower.training
    tower.eval()
    assert not tower.training


@pytest.fixture(scope="module")
def lit_clip():
    """configs/clip/effnet_minilm.yaml's CLIP: EfficientNet-Lite0 + MiniLM, both pretrained."""
    cfg = load_config(ClipConfig, EFFNET_CONFIG)
    tokenizer = HFTokenizerAdapter.from_pretrained(resolve_model_dir(cfg.model.text.hf_path))
    return cfg, CLIP(cfg.model, cfg.loss, None), tokenizer


@pytest.mark.slow
def test_config_rules_unlock_the_last_block_and_frozen_batchnorm_keeps_its_statistics(lit_clip):
    cfg, model, tokenizer = copy.deepcopy(lit_clip)
    groups = build_param_groups(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.param_groups)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    unlocked = {name for name, _ in model.named_parameters() if re.search(UNLOCKED, name)}
    assert trainable == unlocked | {"image_projection.weight", "text_projection.weight", "logit_scale"}
    assert {name for group in groups if group["lr"] == 1e-4 for name in group["names"]} == unlocked
    net = model.vision.net
    model.train()
    assert not model.text.training and not net._conv_stem.training and not net._blocks[14].training
    assert net._blocks[15].training and net._bn1.training and model.vision.training

    before = copy.deepcopy(model.vision.state_dict())
    optimizer = torch.optim.AdamW(groups)
    images = clip_normalise(torch.rand(4, 3, 64, 64))
    input_ids, attention_mask = tokenizer(["a red apple", "a cat face", "a rocket", "a green heart"], 16)
    out = model(images, input_ids, attention_mask)
    (out["image_features"] @ out["text_features"].T).diagonal().sum().neg().backward()
    optimizer.step()

    after = model.vision.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    frozen = {name for name in before if not re.search(UNLOCKED, "vision." + name)}
    assert not changed & frozen  # frozen weights and frozen BatchNorm running statistics are untouched
    assert "net._blocks.15._bn2.running_mean" in changed and "net._conv_head.weight" in changed


@pytest.mark.slow
def test_checkpoint_round_trip_keeps_the_pretrained_towers(lit_clip, tmp_path):
    cfg, model, tokenizer = copy.deepcopy(lit_clip)
    model.vision.net._blocks[15]._bn2.running_mean.add_(0.5)  # as if trained: differs from the ImageNet weights
    save_clip(tmp_path / "clip.pt", cfg, model.state_dict(), tokenizer, model)
    bundle = load_clip(tmp_path / "clip.pt")
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(bundle.model.encode_image(images), model.eval().encode_image(images))


# --- Hugging Face CLIP / SigLIP -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny randomly initialised image encoders saved like downloaded ones (nothing is downloaded)."""
    root = tmp_path_factory.mktemp("hf_vision")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)).save_pretrained(root / "clip")
    CLIPModel(CLIPConfig(vision_config=TINY_VIT, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=99,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))).save_pretrained(root / "dual")
    SiglipVisionModel(SiglipVisionConfig(**TINY_VIT)).save_pretrained(root / "siglip")
    (root / "siglip" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3,
                                                                         "image_std": [0.5] * 3}))
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4).save_pretrained(root / "bert")
    return {path.name: path for path in root.iterdir()}


def test_hf_clip_tower_pools_the_post_layernormed_class_token(hf_folders):
    tower = build_vision_tower(VisionConfig(type="hf", hf_path=str(hf_folders["clip"])), embed_dim=64).eval()
    assert isinstance(tower, HFVisionTower) and tower.output_width == 32
    images = clip_normalise(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        hidden = tower.model(pixel_values=images).last_hidden_state  # [2, 17, 32]; CLIP wants CLIP normalisation
        torch.testing.assert_close(tower(images), tower.model.post_layernorm(hidden[:, 0]))
        assert tower(torch.randn(2, 3, 48, 48)).shape == (2, 32)  # another size: position embeddings interpolated


def test_hf_siglip_tower_gets_its_own_normalisation(hf_folders):
    tower = HFVisionTower.from_pretrained(hf_folders["siglip"]).eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = tower.model(pixel_values=(pixels - 0.5) / 0.5).pooler_output  # [2, 32]
        torch.testing.assert_close(tower(clip_normalise(pixels)), expected, rtol=1e-4, atol=1e-5)


def test_hf_tower_loads_the_image_half_of_a_dual_folder(hf_folders):
    tower = HFVisionTower.from_pretrained(hf_folders["dual"])
    full = CLIPModel.from_pretrained(hf_folders["dual"])
    assert torch.equal(tower.model.embeddings.patch_embedding.weight,
                       full.vision_model.embeddings.patch_embedding.weight)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_hf_tower_rebuilt_from_config_dict_and_state_dict_is_identical(hf_folders, name):
    tower = HFVisionTower.from_pretrained(hf_folders[name]).eval()
    config = json.loads(json.dumps(tower.config_dict()))  # as stored in a checkpoint's extras
    rebuilt = build_vision_tower(VisionConfig(type="hf"), embed_dim=64, hf_config=config)
    rebuilt.load_state_dict(tower.state_dict())  # strict: the input affine buffers travel too
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images), tower(images))


def test_hf_tower_user_errors_name_the_culprit(hf_folders, tmp_path):
    with pytest.raises(MmtoolError, match="model.vision.hf_path"):
        build_vision_tower(VisionConfig(type="hf"), embed_dim=64)
    with pytest.raises(MmtoolError, match="'bert'"):
        HFVisionTower.from_pretrained(hf_folders["bert"])
    with pytest.raises(MmtoolError, match="no config.json"):
        HFVisionTower.from_pretrained(tmp_path)
    with pytest.raises(MmtoolError, match="efficientnet_lite0, hf"):
        build_vision_tower(VisionConfig(type="convnext"), embed_dim=64)
