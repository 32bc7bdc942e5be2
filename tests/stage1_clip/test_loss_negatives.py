"""ClipLoss with extra per-image negative captions against a naive float64 formula."""
import torch
import torch.nn.functional as F

from stage1_clip.loss import ClipLoss


def naive_clip_with_negatives(images, texts, negatives, scale):
    """Row i of image->text: the B batch texts then image i's own K negatives; text->image is plain."""
    n, k = images.shape[0], negatives.shape[1]
    image_to_text = 0.0
    for i in range(n):
        row = [scale * (images[i] * texts[j]).sum() for j in range(n)]
        row += [scale * (images[i] * negatives[i, m]).sum() for m in range(k)]
        image_to_text = image_to_text + torch.log(sum(torch.exp(v) for v in row)) - row[i]
    text_to_image = 0.0
    for i in range(n):
        row = [scale * (texts[i] * images[j]).sum() for j in range(n)]
        text_to_image = text_to_image + torch.log(sum(torch.exp(v) for v in row)) - row[i]
    return ((image_to_text + text_to_image) / (2 * n)).squeeze()


def test_negative_columns_match_naive_formula_and_gradients():
    gen = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    texts = F.normalize(torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    negatives = F.normalize(torch.randn(6, 3, 8, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor([7.5], dtype=torch.float64, requires_grad=True)
    inputs = (images, texts, negatives, scale)

    loss = ClipLoss()(images, texts, scale, negative_text_features=negatives)
    reference = naive_clip_with_negatives(images, texts, negatives, scale)
    assert torch.allclose(loss, reference, rtol=1e-12, atol=0)
    got = torch.autograd.grad(loss, inputs)
    want = torch.autograd.grad(reference, inputs)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-14)
    assert got[2].abs().sum() > 0  # the negatives receive gradient


def test_no_negatives_is_the_plain_loss_and_negatives_raise_it():
    gen = torch.Generator().manual_seed(1)
    images = F.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=-1)
    scale = torch.tensor([10.0], dtype=torch.float64)
    plain = ClipLoss()(images, texts, scale)
    # A negative identical to the positive caption would be a leak: the loss rises by exactly that column.
    leaked = ClipLoss()(images, texts, scale, negative_text_features=texts[:, None, :])
    assert leaked > plain
    row = scale * images @ texts.T  # [5, 5]
    expected_i2t = (torch.logsumexp(torch.cat([row, row.diagonal()[:, None]], 1), 1) - row.diagonal()).mean()
    expected = (expected_i2t + (torch.logsumexp(row.T, 1) - row.diagonal()).mean()) / 2
    assert torch.allclose(leaked, expected, rtol=1e-12)
