"""Stage 2's image-token options: CLIP's own image embedding as one more token, another input size, pooled tokens."""
import pytest
import torch
from PIL import Image

from mmtool.errors import MmtoolError
from stage1_clip.checkpoint import load_clip
from stage2_projector.checkpoint import build_vlm, load_vlm, save_vlm
from stage2_projector.config import AlignConfig, ModelConfig
from stage2_projector.llm import add_image_token
from tests.helpers.tiny_vlm import CORPUS, chatml_tokenizer, save_tiny_clip, tiny_llama


def tiny_llm():
    return add_image_token(tiny_llama(len(chatml_tokenizer(CORPUS)) + 1), chatml_tokenizer(CORPUS), "tiny")


@pytest.mark.parametrize("vision_type, size", [("vit", 32), ("efficientnet_lite0", 64)])
def test_the_extra_token_is_clips_image_embedding_in_its_own_channels(tmp_path, vision_type, size):
    clip_path = save_tiny_clip(tmp_path / "clip.pt", vision_type=vision_type)
    clip = load_clip(clip_path)
    cfg = AlignConfig(model=ModelConfig(vision=str(clip_path), clip_embedding_token=True, image_size=size))
    bundle = build_vlm(cfg, clip_path, llm=tiny_llm())
    plain = build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path), image_size=size)), clip_path,
                      llm=bundle.llm)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = bundle.model.vision.eval()(images)  # [2, N + 1, C + E]
        patches = plain.model.vision.eval()(images)  # [2, N, C]
        reference = clip.model.eval().encode_image(images)  # [2, E], unit norm
    n, width = patches.shape[1], patches.shape[2]
    embed_dim = reference.shape[1]
    assert tokens.shape == (2, n + 1, width + embed_dim)
    assert bundle.num_image_tokens == plain.num_image_tokens + 1 == n + 1
    assert bundle.record["projector"]["in_dim"] == width + embed_dim
    torch.testing.assert_close(tokens[:, :n, :width], patches)
    assert not tokens[:, :n, width:].any() and not tokens[:, n, :width].any()
    torch.testing.assert_close(tokens[:, n, width:], reference * embed_dim ** 0.5, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_the_embedding_weights_and_token_grid_reload_with_the_checkpoint(tmp_path, head):
    clip_path = save_tiny_clip(tmp_path / "clip.pt", vision_type="efficientnet_lite0", head=head)
    cfg = AlignConfig(model=ModelConfig(vision=str(clip_path), clip_embedding_token=True, image_size=128,
                                        token_grid=2))
    bundle = build_vlm(cfg, clip_path, llm=tiny_llm())
    save_vlm(tmp_path / "vlm.pt", bundle.record, bundle.model.state_dict())
    loaded = load_vlm(tmp_path / "vlm.pt", llm=bundle.llm)
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.vision(images), bundle.model.vision.eval()(images))
        reference = load_clip(clip_path).model.eval().encode_image(images)  # [1, E]
        torch.testing.assert_close(loaded.model.vision.joint_embeddings(loaded.model.vision(images)), reference)
    assert loaded.record["vision"]["image_size"] == 128 and loaded.num_image_tokens == 5  # 2 x 2 pooled + 1
    assert loaded.preprocess(open_png(tmp_path)).shape == (3, 128, 128)


@pytest.mark.parametrize("vision_type, size", [("vit", 32), ("efficientnet_lite0", 128)])
def test_token_grid_averages_blocks_of_the_feature_map(tmp_path, vision_type, size):
    """Both towers give a 4 x 4 map here; a 2 x 2 grid is the mean of each 2 x 2 block, computed by reshaping."""
    clip_path = save_tiny_clip(tmp_path / "clip.pt", vision_type=vision_type)
    full = build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path), image_size=size)), clip_path,
                     llm=tiny_llm())
    pooled = build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path), image_size=size, token_grid=2)),
                       clip_path, llm=full.llm)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = full.model.vision.eval()(images).double()  # [2, 16, C]
        got = pooled.model.vision.eval()(images).double()  # [2, 4, C]
    blocks = tokens.unflatten(1, (2, 2, 2, 2)).mean(dim=(2, 4)).flatten(1, 2)  # rows (i, a), cols (j, b) -> [2, 4, C]
    torch.testing.assert_close(got, blocks, atol=1e-5, rtol=1e-5)
    assert full.num_image_tokens == 16 and pooled.num_image_tokens == 4 and pooled.record["vision"]["token_grid"] == 2
    with pytest.raises(MmtoolError, match="model.token_grid 0"):
        build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path), image_size=size, token_grid=0)), clip_path,
                  llm=full.llm)
    with pytest.raises(MmtoolError, match="model.token_grid 5: larger than layer .*'s 4x4 map"):
        build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path), image_size=size, token_grid=5)), clip_path,
                  llm=full.llm)


def test_a_vit_tower_keeps_its_trained_size(tmp_path):
    clip_path = save_tiny_clip(tmp_path / "clip.pt")
    with pytest.raises(MmtoolError, match="model.image_size 48: a ViT tower runs at the size it was trained at"):
        build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path), image_size=48)), clip_path, llm=tiny_llm())


def open_png(folder):
    path = folder / "image.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    return path.read_bytes()
