"""CLIP / SigLIP losses in one process, against naive float64 references written element by element."""
import math

import pytest
import torch
import torch.nn.functional as F

from stage1_clip.loss import ClipLoss, SigLipLoss, build_loss, gather_features


def naive_clip(images, texts, scale, bias):
    """Both cross-entropies from explicit dot products and a hand-written log-sum-exp."""
    n = images.shape[0]
    logits = [[scale * (images[i] * texts[j]).sum() + bias for j in range(n)] for i in range(n)]
    columns = [[logits[i][j] for i in range(n)] for j in range(n)]

    def cross_entropy(rows):  # the target of row k is entry k
        return sum(torch.log(sum(torch.exp(v) for v in row)) - row[k] for k, row in enumerate(rows)) / n

    return ((cross_entropy(logits) + cross_entropy(columns)) / 2).squeeze()


def naive_siglip(images, texts, scale, bias):
    """-log sigmoid(t) = log(1 + exp(-t)), summed pair by pair, divided by the number of images."""
    n = images.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total + torch.log1p(torch.exp(-z * (scale * (images[i] * texts[j]).sum() + bias)))
    return (total / n).squeeze()


NAIVE = {"clip": naive_clip, "siglip": naive_siglip}


def random_inputs(n, dim=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=-1).requires_grad_()  # [n, D]
    texts = F.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=-1).requires_grad_()  # [n, D]
    scale = torch.full((1,), 10.0, dtype=dtype, requires_grad=True)  # exp(ln 10): already the multiplier
    bias = torch.full((1,), -2.5, dtype=dtype, requires_grad=True)
    return images, texts, scale, bias


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("n", [1, 6])
def test_value_and_gradients_match_naive_reference(kind, n):
    inputs = random_inputs(n)
    loss = build_loss(kind)(*inputs)
    expected = NAIVE[kind](*inputs)
    assert loss.shape == () and loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(loss, inputs)
    expected_grads = torch.autograd.grad(expected, inputs)
    for name, got, want in zip(["images", "texts", "scale", "bias"], grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"d loss / d {name}: {m}")


def test_clip_of_perfectly_separated_batch_is_near_zero():
    eye = torch.eye(4, dtype=torch.float64)  # each image equals its own text, orthogonal to the others
    loss = ClipLoss()(eye, eye, torch.tensor([100.0], dtype=torch.float64))
    assert loss < 1e-40
    uniform = ClipLoss()(eye, eye, torch.tensor([0.0], dtype=torch.float64))
    assert math.isclose(uniform.item(), math.log(4))  # zero scale: every row is uniform over 4 columns


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_dim_scale_and_bias_work_like_shape_one(kind):
    images, texts, scale, bias = random_inputs(5)
    torch.testing.assert_close(build_loss(kind)(images, texts, scale.reshape(()), bias.reshape(())),
                               build_loss(kind)(images, texts, scale, bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_bf16_features_give_float32_loss_close_to_fp32(kind):
    images, texts, scale, bias = (t.detach().float() for t in random_inputs(32, dim=64))
    reference = build_loss(kind)(images, texts, scale, bias)
    images16 = images.bfloat16().requires_grad_()
    loss = build_loss(kind)(images16, texts.bfloat16(), scale.bfloat16(), bias.bfloat16())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=2e-2, atol=2e-2)
    loss.backward()
    assert images16.grad.dtype == torch.bfloat16 and torch.isfinite(images16.grad).all()


def test_siglip_without_bias_is_an_error():
    images, texts, scale, _ = random_inputs(3)
    with pytest.raises(ValueError, match="logit_bias"):
        SigLipLoss()(images, texts, scale)


def test_build_loss_names_the_bad_kind():
    assert isinstance(build_loss("clip"), ClipLoss) and isinstance(build_loss("siglip"), SigLipLoss)
    with pytest.raises(ValueError, match="'infonce'"):
        build_loss("infonce")


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 4)
    assert gather_features(x) is x
