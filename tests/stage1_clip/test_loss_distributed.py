"""Two gloo ranks holding half a batch each must train exactly like one process holding all of it.

A tiny model (two linear projections + logit scale + bias, same initial weights everywhere) stands in for
CLIP. Each rank backpropagates its local loss, then its parameter gradients are all-reduced and divided by
the world size, as DDP / DeepSpeed do. Loss and gradients must match the full-batch run in float64.
"""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import stage1_clip.loss as loss_module
from tests.helpers.distributed import run_on_ranks

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORLD, PER_RANK, IMAGE_IN, TEXT_IN, DIM = 2, 4, 6, 5, 3
KINDS = ["clip", "siglip"]
TOL = dict(rtol=1e-10, atol=1e-10)


class TinyClip(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_projection = nn.Linear(IMAGE_IN, DIM, bias=False)
        self.text_projection = nn.Linear(TEXT_IN, DIM)
        self.logit_scale = nn.Parameter(torch.full((1,), 2.3))  # exp: ~10
        self.logit_bias = nn.Parameter(torch.full((1,), -2.0))


def make_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    model = TinyClip().double()
    for p in model.parameters():  # fixed, seeded weights for every rank
        p.data = p.data + 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64)
    return {"images": torch.randn(WORLD * PER_RANK, IMAGE_IN, generator=g, dtype=torch.float64),
            "texts": torch.randn(WORLD * PER_RANK, TEXT_IN, generator=g, dtype=torch.float64),
            "state": model.state_dict()}


def train_step(kind: str, batch: dict, rows: slice) -> dict:
    """Loss and gradients of one step on batch rows `rows`; features keep their gradients too."""
    model = TinyClip().double()
    model.load_state_dict(batch["state"])
    image_features = F.normalize(model.image_projection(batch["images"][rows]), dim=-1)  # [B, DIM]
    text_features = F.normalize(model.text_projection(batch["texts"][rows]), dim=-1)  # [B, DIM]
    image_features.retain_grad()
    text_features.retain_grad()
    loss = loss_module.build_loss(kind)(image_features, text_features, model.logit_scale.exp(), model.logit_bias)
    loss.backward()
    return {"loss": loss.detach(), "image_features": image_features.grad, "text_features": text_features.grad,
            **{name: p.grad for name, p in model.named_parameters()}}


def all_reduce_mean(grads: dict, world: int) -> dict:
    """What the data-parallel engine does to parameter gradients."""
    for name in [n for n, _ in TinyClip().named_parameters()]:
        dist.all_reduce(grads[name])
        grads[name] /= world
    return grads


def gather_without_grad(x: torch.Tensor) -> torch.Tensor:
    """The tempting shortcut: other ranks' features as constants, only the local slice differentiable."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def rank_worker(rank: int, world: int, batch: dict, out_dir: str) -> None:
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results = {kind: all_reduce_mean(train_step(kind, batch, rows), world) for kind in KINDS}
    with_grad_gather = loss_module.gather_features
    loss_module.gather_features = gather_without_grad
    results["without_grad"] = {kind: all_reduce_mean(train_step(kind, batch, rows), world) for kind in KINDS}
    loss_module.gather_features = with_grad_gather
    try:  # rank 1 holds one sample more: every rank must get the clear message, none may hang
        loss_module.gather_features(torch.zeros(PER_RANK + rank, DIM))
    except AssertionError as error:
        results["unequal_batch_error"] = str(error)
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("ranks")
    batch = make_batch()
    run_on_ranks(rank_worker, WORLD, batch, str(out_dir))
    ranks = [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]
    full = {kind: train_step(kind, batch, slice(None)) for kind in KINDS}
    return {"ranks": ranks, "full": full}


@pytest.mark.parametrize("kind", KINDS)
def test_mean_of_rank_losses_is_full_batch_loss(runs, kind):
    rank_losses = torch.stack([r[kind]["loss"] for r in runs["ranks"]])
    torch.testing.assert_close(rank_losses.mean(), runs["full"][kind]["loss"], **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_averaged_parameter_gradients_are_full_batch_gradients(runs, kind):
    for name, _ in TinyClip().named_parameters():
        for rank, result in enumerate(runs["ranks"]):
            torch.testing.assert_close(result[kind][name], runs["full"][kind][name], **TOL,
                                       msg=lambda m: f"rank {rank}, grad of {name}: {m}")


@pytest.mark.parametrize("kind", KINDS)
def test_rank_feature_gradients_are_world_times_full_batch_slice(runs, kind):
    for rank, result in enumerate(runs["ranks"]):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        for name in ["image_features", "text_features"]:
            torch.testing.assert_close(result[kind][name] / WORLD, runs["full"][kind][name][rows], **TOL,
                                       msg=lambda m: f"rank {rank}, grad of {name}: {m}")


@pytest.mark.parametrize("kind", KINDS)
def test_gather_without_grad_gives_right_loss_but_wrong_gradients(runs, kind):
    full = runs["full"][kind]
    broken = [r["without_grad"][kind] for r in runs["ranks"]]
    torch.testing.assert_close(torch.stack([b["loss"] for b in broken]).mean(), full["loss"], **TOL)
    # SigLIP gathers only texts, so only the text side loses the other ranks' contributions.
    wrong = ["text_projection.weight"] if kind == "siglip" else ["image_projection.weight", "text_projection.weight"]
    for name in wrong:
        assert not torch.allclose(broken[0][name], full[name], rtol=1e-6, atol=1e-6), name


def test_unequal_batch_sizes_fail_clearly_on_every_rank(runs):
    for result in runs["ranks"]:
        assert "same batch size on every rank, got [4, 5]" in result["unequal_batch_error"]
