"""Gradient caching gives exactly the full-batch gradient: towers, logit scale and bias included."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stage1_clip.grad_cache import LOSS_INPUTS, cached_step
from stage1_clip.loss import build_loss


class TinyClip(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 8))
        self.text = nn.Sequential(nn.Embedding(30, 16), nn.Dropout(dropout), nn.Linear(16, 8))
        self.logit_scale = nn.Parameter(torch.tensor([2.0]))
        self.logit_bias = nn.Parameter(torch.tensor([-3.0]))

    def forward(self, images, tokens, mask):
        text = (self.text(tokens) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [B, 8]
        return {"image_features": F.normalize(self.image(images), dim=-1),
                "text_features": F.normalize(text, dim=-1),
                "logit_scale": self.logit_scale.exp(), "logit_bias": self.logit_bias}


class PlainEngine:
    """The three calls cached_step makes, on a plain module: gradients accumulate, no optimizer step."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *inputs):
        return self.module(*inputs)

    def backward(self, loss, scale_wrt_gas=True):
        assert scale_wrt_gas is False  # the cached gradients are already the full-batch share
        loss.backward()

    def step(self):
        pass


def batch(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 12, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, 30, (n, 5), generator=gen)
    mask = (torch.rand(n, 5, generator=gen) > 0.3).double()
    mask[:, 0] = 1
    return images, tokens, mask


def split(inputs, k):
    return list(zip(*(t.chunk(k) for t in inputs)))


def grads(model):
    return {name: torch.zeros_like(p) if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_cached_gradient_equals_full_batch_gradient(kind, k):
    loss_fn = build_loss(kind)
    inputs = batch(16, seed=0)
    torch.manual_seed(0)
    model = TinyClip().double()

    outputs = model(*inputs)
    full_loss = loss_fn(*(outputs[n] for n in LOSS_INPUTS))
    full_loss.backward()
    expected = grads(model)
    model.zero_grad()

    loss, scale = cached_step(PlainEngine(model), loss_fn, split(inputs, k))
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-12)
    assert scale.item() == pytest.approx(model.logit_scale.exp().item())
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-10, atol=1e-13, msg=name)


def test_scale_gradient_counted_once_not_k_times():
    """The bug this design avoids: back-propagating the whole loss through the scale in each micro-step."""
    loss_fn = build_loss("clip")
    inputs = batch(16, seed=1)
    model = TinyClip().double()
    cached_step(PlainEngine(model), loss_fn, split(inputs, 4))
    once = model.logit_scale.grad.clone()
    model.zero_grad()
    outputs = model(*inputs)
    loss_fn(*(outputs[n] for n in LOSS_INPUTS)).backward()
    assert once.item() == pytest.approx(model.logit_scale.grad.item(), rel=1e-10)
    assert abs(once.item()) > 1e-6


def test_dropout_masks_replay_between_the_two_passes():
    """Reference: the features of the first (no-grad) pass, with autograd; equal only if the masks replay."""
    loss_fn = build_loss("clip")
    inputs = batch(12, seed=2)
    micro = split(inputs, 3)
    model = TinyClip(dropout=0.5).double().train()

    torch.manual_seed(123)
    outs = [model(*m) for m in micro]
    merged = {n: torch.cat([o[n] for o in outs]) for n in ("image_features", "text_features")}
    loss_fn(merged["image_features"], merged["text_features"], outs[0]["logit_scale"], None).backward()
    expected = grads(model)
    model.zero_grad()

    torch.manual_seed(123)
    cached_step(PlainEngine(model), loss_fn, micro)
    for name, grad in grads(model).items():
        if name != "logit_bias":  # CLIP ignores the bias
            torch.testing.assert_close(grad, expected[name], rtol=1e-10, atol=1e-13, msg=name)


def _accumulate_on_rank(rank: int, world: int, kind: str, k: int, out_dir: str) -> None:
    """This rank's half of the batch in k micro-batches; gradients summed over ranks / world as DP does."""
    inputs = batch(16, seed=4)
    half = [t.chunk(world)[rank] for t in inputs]
    torch.manual_seed(0)
    model = TinyClip().double()
    cached_step(PlainEngine(model), build_loss(kind), split(half, k))
    averaged = {}
    for name, grad in grads(model).items():
        torch.distributed.all_reduce(grad)
        averaged[name] = grad / world
    torch.save(averaged, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_accumulation_times_ranks_equals_one_process_with_everything(tmp_path, kind):
    from tests.helpers.distributed import run_on_ranks

    run_on_ranks(_accumulate_on_rank, 2, kind, 2, str(tmp_path))
    torch.manual_seed(0)
    model = TinyClip().double()
    outputs = model(*batch(16, seed=4))
    build_loss(kind)(*(outputs[n] for n in LOSS_INPUTS)).backward()
    for rank in range(2):
        for name, grad in torch.load(tmp_path / f"rank{rank}.pt").items():
            torch.testing.assert_close(grad, grads(model)[name], rtol=1e-10, atol=1e-13, msg=f"rank {rank} {name}")
