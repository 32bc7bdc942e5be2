"""The image and text towers: shapes, pooling, masking, parameter counts against OpenAI CLIP, HF parity."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mmtool.errors import MmtoolError
from stage1_clip.attention import SelfAttention
from stage1_clip.hf_text import HFTextTower, HFTokenizerAdapter
from stage1_clip.resnet import ModifiedResNet
from stage1_clip.text_transformer import TextTransformer
from stage1_clip.vit import VisionTransformer

PAD, BOS, EOS = 0, 2, 3


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_vit(**kw) -> VisionTransformer:
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=4, **kw)


def tiny_text(**kw) -> TextTransformer:
    return TextTransformer(vocab_size=50, context_length=12, width=32, layers=2, heads=4, **kw)


def caption(*pieces: int, length: int) -> list[int]:
    seq = [BOS, *pieces, EOS]
    return seq + [PAD] * (length - len(seq))


# --- attention -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_attention_equals_naive_softmax_reference(causal):
    torch.manual_seed(0)
    attn = SelfAttention(width=24, heads=3, causal=causal).double()
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    B, T, D, H = 2, 7, 24, 3
    q, k, v = attn.qkv(x).split(D, dim=-1)  # 3 x [B, T, D]
    q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))  # 3 x [B, H, T, hd]
    scores = q @ k.transpose(-2, -1) / math.sqrt(D // H)  # [B, H, T, T]
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)  # [B, T, D]
    torch.testing.assert_close(attn(x), attn.out(y), rtol=0, atol=1e-12)


# --- ViT -------------------------------------------------------------------------------------------------------

def test_vit_shapes_and_hidden_states():
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    pooled = vit(images)
    assert vit.output_width == 32 and pooled.shape == (2, 32)
    hidden = vit.forward_hidden_states(images)
    assert len(hidden) == 2 + 1  # embeddings + one per block
    assert all(h.shape == (2, 1 + 16, 32) for h in hidden)
    torch.testing.assert_close(vit.ln_post(hidden[-1][:, 0]), pooled)


def test_vit_casts_images_to_the_weights_dtype():
    vit = tiny_vit().to(torch.bfloat16)
    assert vit(torch.randn(1, 3, 32, 32)).dtype == torch.bfloat16


def test_vit_residual_stream_is_bf16_under_autocast_and_close_to_fp32():
    """Under bf16 autocast the stream between blocks takes the patch embedding's bf16 (what backward saves per
    block); the pooled output stays within bf16 rounding of the fp32 forward."""
    torch.manual_seed(0)
    vit, images = tiny_vit().eval(), torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", torch.bfloat16):
        hidden = vit.forward_hidden_states(images)
        pooled = vit(images)
    assert all(h.dtype == torch.bfloat16 for h in hidden)
    assert all(h.dtype == torch.float32 for h in vit.forward_hidden_states(images))
    reference = vit(images)  # [2, 32] fp32
    assert (pooled.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_vit_b32_parameter_count_matches_openai_clip():
    # OpenAI ViT-B/32 visual = 87,849,216 including proj (768 x 512 = 393,216), which CLIP owns here:
    # conv1 3*768*32*32 = 2,359,296; class 768; positions 50*768 = 38,400; ln_pre + ln_post 2*1,536;
    # 12 blocks x (qkv 768*2304+2304 + out 768*768+768 + fc 768*3072+3072 + proj 3072*768+768 + 2 LN 3,072)
    # = 12 x 7,087,872 = 85,054,464; total 87,456,000.
    with torch.device("meta"):  # count without allocating or initialising
        vit = VisionTransformer(image_size=224, patch_size=32, width=768, layers=12, heads=12)
    assert n_params(vit) == 87_849_216 - 768 * 512 == 87_456_000


# --- ResNet ----------------------------------------------------------------------------------------------------

def test_resnet_tiny_shape_and_dtype():
    torch.manual_seed(0)
    resnet = ModifiedResNet(layers=(1, 1, 1, 1), width=16, heads=4, image_size=64, output_dim=24).eval()
    assert resnet.output_width == 24
    assert resnet(torch.randn(2, 3, 64, 64)).shape == (2, 24)
    assert resnet.to(torch.bfloat16)(torch.randn(1, 3, 64, 64)).dtype == torch.bfloat16


def test_rn50_parameter_count_matches_openai_clip():
    # OpenAI RN50 visual (output_dim 1024, 224 px) = 38,316,896: the trunk is torchvision's ResNet-50 without fc
    # (23,508,032) with the 7x7 stem (9,408 + BN 128) swapped for three 3x3 convs (864 + 9,216 + 18,432 + BN 256):
    # 23,527,264; the attention pool adds positions 50*2048 = 102,400, q/k/v 3*(2048*2048+2048) = 12,589,056 and
    # c_proj 2048*1024+1024 = 2,098,176: 14,789,632.
    with torch.device("meta"):
        rn50 = ModifiedResNet(layers=(3, 4, 6, 3), width=64, heads=32, image_size=224, output_dim=1024)
    assert n_params(rn50.attnpool) == 14_789_632
    assert n_params(rn50) == 38_316_896


# --- text transformer ------------------------------------------------------------------------------------------

def test_text_pools_at_the_end_of_text_token():
    torch.manual_seed(0)
    text = tiny_text().eval()
    tokens = torch.tensor([caption(5, 6, 7, length=12), caption(8, length=12)])
    pooled = text(tokens)
    assert text.output_width == 32 and pooled.shape == (2, 32)
    hidden = text.transformer(text.token_embedding(tokens) + text.positional_embedding)[-1]  # [B, T, D]
    torch.testing.assert_close(pooled, text.ln_final(hidden[[0, 1], [4, 2]]))  # the eos positions
    # Padding never reaches eos: fewer pads (a shorter T), or a row alone, gives the same output.
    torch.testing.assert_close(text(tokens[:, :6]), pooled)
    torch.testing.assert_close(text(tokens[1:, :3]), pooled[1:])
    # A token before eos does change it.
    changed = tokens.clone()
    changed[0, 2] = 9
    assert not torch.allclose(text(changed)[0], pooled[0])
    torch.testing.assert_close(text(changed)[1], pooled[1])


def test_text_attention_is_causal():
    torch.manual_seed(0)
    text = tiny_text().eval()
    tokens = torch.randint(4, 50, (1, 10))
    changed = tokens.clone()
    changed[0, 6] = (tokens[0, 6] + 1 - 4) % 46 + 4
    embed = lambda t: text.token_embedding(t) + text.positional_embedding[:10]  # noqa: E731
    before, after = text.transformer(embed(tokens))[-1], text.transformer(embed(changed))[-1]  # [1, 10, D]
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


# --- gradient checkpointing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, inputs", [
    (tiny_vit, lambda: (torch.randn(2, 3, 32, 32),)),
    (tiny_text, lambda: (torch.tensor([caption(5, 6, length=12), caption(7, 8, 9, 10, length=12)]),)),
])
def test_grad_checkpointing_gives_the_same_grads(make, inputs):
    torch.manual_seed(0)
    plain, checkpointed = make(), make(grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    args = inputs()
    for model in (plain, checkpointed):
        model(*args).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_hf_tower_grad_checkpointing_gives_the_same_grads():
    tiny_bert = dict(model_type="bert", vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    plain = HFTextTower.from_config_dict(tiny_bert).train()
    checkpointed = HFTextTower.from_config_dict(tiny_bert, grad_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert plain.output_width == 16 and not any("pooler" in k for k in plain.state_dict())
    ids = torch.randint(1, 40, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    for model in (plain, checkpointed):
        model(ids, mask).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


# --- Hugging Face tower: parity with sentence-transformers ------------------------------------------------------

TEXTS = ["a grinning face with big eyes", "Red heart", "a cat", "flag: Japan, white with a red disc in the middle"]


@pytest.fixture(scope="module")
def minilm_dir():
    from mmtool.pretrained import resolve_model_dir

    try:
        path = resolve_model_dir("minilm")
    except MmtoolError as e:
        pytest.skip(str(e))
    return path


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return HFTextTower.from_pretrained(minilm_dir).eval(), HFTokenizerAdapter.from_pretrained(minilm_dir)


def test_hf_tokenizer_matches_transformers_and_round_trips(minilm_dir, minilm):
    from transformers import AutoTokenizer

    _, tokenizer = minilm
    ids, mask = tokenizer(TEXTS, context_length=24)
    reference = AutoTokenizer.from_pretrained(minilm_dir, local_files_only=True)(
        TEXTS, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    assert torch.equal(ids, reference["input_ids"]) and torch.equal(mask, reference["attention_mask"])
    again = HFTokenizerAdapter(tokenizer.serialize())
    assert again.vocab_size == tokenizer.vocab_size == 30522
    assert all(torch.equal(a, b) for a, b in zip(again(TEXTS, 24), (ids, mask)))
    short, short_mask = tokenizer(TEXTS[3:], context_length=6)  # truncation keeps [CLS] ... [SEP]
    assert short[0, 0] == 101 and short[0, -1] == 102 and short_mask.all()


def test_hf_tower_mean_pooling_matches_sentence_transformers(minilm_dir, minilm):
    from sentence_transformers import SentenceTransformer

    tower, tokenizer = minilm
    assert tower.output_width == 384
    with torch.no_grad():
        ours = tower(*tokenizer(TEXTS, context_length=32))  # [B, 384]
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(F.normalize(ours, dim=-1), reference, rtol=0, atol=1e-5)  # it ends in Normalize


def test_hf_tower_cls_pooling_and_rebuild_from_config(minilm):
    tower, tokenizer = minilm
    ids, mask = tokenizer(TEXTS, context_length=32)
    rebuilt = HFTextTower.from_config_dict(tower.config_dict(), pooling="cls").eval()
    rebuilt.load_state_dict(copy.deepcopy(tower.state_dict()))
    with torch.no_grad():
        hidden = tower.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, 384]
        torch.testing.assert_close(rebuilt(ids, mask), hidden[:, 0])
    with pytest.raises(MmtoolError, match="pooling"):
        HFTextTower(rebuilt.model, pooling="max")
