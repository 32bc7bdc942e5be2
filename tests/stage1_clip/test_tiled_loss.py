"""Tiled CLIP / SigLIP losses: the dense losses' values and gradients, on one rank and on a ring, without N² memory."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stage1_clip.loss import build_loss
from stage1_clip.tiled_loss import TiledClipLoss, TiledSigLipLoss, build_tiled_loss
from tests.helpers.distributed import run_on_ranks

KINDS = ["clip", "siglip"]
NAMES = ["images", "texts", "scale", "bias"]
TOL = dict(rtol=1e-10, atol=1e-10)


def random_inputs(n, dim=32, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)  # [n, D]
    texts = F.normalize(images + torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)  # [n, D], ~paired
    scale, bias = torch.tensor([10.0], dtype=torch.float64), torch.tensor([-2.5], dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (images, texts, scale, bias)]


def loss_and_grads(loss_fn, inputs, weight=1.0):
    loss = loss_fn(*inputs)
    return loss.detach(), torch.autograd.grad(loss * weight, inputs)


def assert_same(got, want, tol):
    torch.testing.assert_close(got[0], want[0], **tol, msg=lambda m: f"loss: {m}")
    for name, g, w in zip(NAMES, got[1], want[1]):
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"d loss / d {name}: {m}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n, tile", [(2048, 384), (1001, 128), (37, 64), (7, 3), (1, 1)])
def test_matches_dense_loss_and_gradients_in_float64(kind, n, tile):
    inputs = random_inputs(n)
    tiled = loss_and_grads(build_tiled_loss(kind, tile), inputs)
    assert tiled[0].shape == () and tiled[0].dtype == torch.float64
    assert_same(tiled, loss_and_grads(build_loss(kind), inputs), TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_features_give_float32_loss_like_dense(kind):
    inputs = random_inputs(300, dtype=torch.bfloat16)
    tiled = loss_and_grads(build_tiled_loss(kind, 64), inputs)
    assert tiled[0].dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in tiled[1])
    assert_same(tiled, loss_and_grads(build_loss(kind), inputs), dict(rtol=1e-2, atol=1e-4))


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_does_not_reach_the_tiles(kind):
    """Backward recomputes forward's tiles, so both stay float32 (a bf16 forward's LSEs would not fit fp32 tiles)."""
    inputs = random_inputs(100, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss_and_grads(build_tiled_loss(kind, 32), inputs)
    assert_same(under_autocast, loss_and_grads(build_tiled_loss(kind, 32), inputs), dict(rtol=0, atol=0))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_dim_scale_and_bias_work_like_shape_one(kind):
    images, texts, scale, bias = random_inputs(9)
    loss = build_tiled_loss(kind, 4)
    torch.testing.assert_close(loss(images, texts, scale.reshape(()), bias.reshape(())),
                               loss(images, texts, scale, bias), rtol=1e-12, atol=1e-12)


def test_clip_bias_cancels_but_stays_in_the_graph():
    images, texts, scale, bias = random_inputs(20)
    loss = TiledClipLoss(8)
    (d_bias,) = torch.autograd.grad(loss(images, texts, scale, bias), [bias])
    assert d_bias.item() == 0.0  # a zero gradient, not None: DDP would flag an unused parameter
    torch.testing.assert_close(loss(images, texts, scale), build_loss("clip")(images, texts, scale), **TOL)


def test_siglip_without_bias_and_bad_arguments_are_errors():
    images, texts, scale, _ = random_inputs(3)
    with pytest.raises(ValueError, match="logit_bias"):
        TiledSigLipLoss(2)(images, texts, scale)
    with pytest.raises(ValueError, match="tile_size"):
        TiledClipLoss(0)
    with pytest.raises(ValueError, match="'infonce'"):
        build_tiled_loss("infonce", 8)
    assert isinstance(build_tiled_loss("siglip", 8), TiledSigLipLoss) and build_tiled_loss("clip", 8).tile_size == 8


@pytest.mark.parametrize("kind", KINDS)
def test_no_saved_tensor_grows_with_n_squared(kind):
    n, dim = 2048, 16
    largest = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: largest.append(t.numel()) or t, lambda t: t):
        loss = build_tiled_loss(kind, 512)(*random_inputs(n, dim, dtype=torch.float32))
    loss.backward()
    assert max(largest) <= n * dim  # the features themselves; the dense loss saves [n, n] logits


PEAK_PROBE = textwrap.dedent("""
    import sys, torch
    import torch.nn.functional as F
    from stage1_clip.loss import build_loss
    from stage1_clip.tiled_loss import build_tiled_loss

    def kib(field):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))

    kind, tiled, n = sys.argv[1], sys.argv[2] == "tiled", int(sys.argv[3])
    loss_fn = build_tiled_loss(kind, 1024) if tiled else build_loss(kind)

    def inputs(n):
        features = [F.normalize(torch.randn(n, 64), dim=-1).requires_grad_() for _ in range(2)]  # [n, 64] each
        return features + [torch.tensor([10.0], requires_grad=True), torch.tensor([-2.5], requires_grad=True)]

    loss_fn(*inputs(64)).backward()  # warm-up: thread pools, kernels
    features = inputs(n)
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark to the current RSS
    before = kib("VmRSS:")
    loss_fn(*features).backward()
    print((kib("VmHWM:") - before) * 1024)
""")


def peak_extra_bytes(kind: str, tiled: bool, n: int) -> int:
    """Peak RSS of one forward + backward above what was resident before, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, kind, "tiled" if tiled else "dense", str(n)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    return int(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_peak_memory_is_far_below_n_squared(kind):
    n = 8192
    n_squared = n * n * 4  # one float32 logit matrix: 256 MiB
    tiled = peak_extra_bytes(kind, True, n)
    assert tiled < n_squared / 2, f"{tiled / 2**20:.0f} MiB"
    if kind == "clip":  # the probe does see an N×N matrix when one is built
        dense = peak_extra_bytes(kind, False, n)
        assert dense > n_squared, f"{dense / 2**20:.0f} MiB"


PER_RANK = 37  # odd, and not a multiple of the tile
TILE = 16


def rank_worker(rank: int, world: int, out_dir: str) -> None:
    inputs = random_inputs(world * PER_RANK, seed=1)
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    local = [t.detach()[rows].requires_grad_() for t in inputs[:2]] + inputs[2:]
    weight = rank + 1.0  # each rank's own upstream gradient must scale only its own contributions
    results = {kind: {"tiled": loss_and_grads(build_tiled_loss(kind, TILE), local, weight),
                      "dense": loss_and_grads(build_loss(kind), local, weight)} for kind in KINDS}
    try:  # rank r holds r samples more: every rank must get the clear message, none may hang
        TiledSigLipLoss(TILE)(*[t.detach()[:PER_RANK + rank] for t in inputs[:2]], *inputs[2:])
    except AssertionError as error:
        results["unequal_batch_error"] = str(error)
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def ranks(request, tmp_path_factory) -> list[dict]:
    """World 3 too: with 2 ranks `next` and `previous` are the same rank, which hides a gradient sent the wrong way."""
    out_dir = tmp_path_factory.mktemp("ranks")
    run_on_ranks(rank_worker, request.param, str(out_dir))
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(request.param)]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("kind", KINDS)
def test_distributed_tiled_loss_matches_dense_on_every_rank(ranks, kind):
    for rank, result in enumerate(ranks):
        try:
            assert_same(result[kind]["tiled"], result[kind]["dense"], TOL)
        except AssertionError as error:
            raise AssertionError(f"rank {rank}: {error}") from None


@pytest.mark.slow
@pytest.mark.distributed
def test_siglip_ring_rejects_unequal_batches_on_every_rank(ranks):
    sizes = list(range(PER_RANK, PER_RANK + len(ranks)))
    for result in ranks:
        assert f"same batch size on every rank, got {sizes}" in result["unequal_batch_error"]
