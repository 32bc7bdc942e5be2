"""An epoch begun on one layout (ranks x workers x micro-batch) and read on by others: the same global order of
samples, none read twice or left out (mmtool/data/reading/relayout.py and the loader's relaid streams)."""
import pytest

from mmtool.data.reading.loader import make_train_loader, resolve_shards, train_layout
from mmtool.data.reading.relayout import EpochOrigin, Layout, origin_positions
from tests.helpers.multinode_launch import cut_shard

SAMPLES, GLOBAL_BATCH = 96, 24  # 4 steps an epoch


def test_the_same_layout_reads_its_own_batches():
    layout = Layout(world=3, workers=2, batch_size=4)
    for rank in range(3):
        for batch in range(5):
            assert origin_positions(layout, layout, rank, batch) == [(rank, batch, o) for o in range(4)]


def test_another_layout_reads_the_global_order_on():
    origin, current = Layout(2, 1, 3), Layout(3, 1, 2)
    # Origin rounds of 6: (rank 0: 0-2, rank 1: 3-5); current round 1 (positions 6-11), rank 2 takes 10-11.
    assert origin_positions(origin, current, 2, 1) == [(1, 1, 1), (1, 1, 2)]


def test_epoch_origin_is_the_layout_that_began_the_epoch():
    two, one = Layout(2, 1, 12), Layout(1, 1, 12)
    saved = EpochOrigin(two)
    assert saved.for_epoch(0, 0) == two
    resumed = EpochOrigin(one)
    resumed.load_state(saved.state())
    assert resumed.for_epoch(0, 2) == two  # mid-epoch 0: read on in epoch 0's order
    assert resumed.for_epoch(1, 0) == one  # a new epoch is dealt by the current layout
    fresh = EpochOrigin(one)
    fresh.load_state(None)  # a state saved before layouts were recorded
    assert fresh.for_epoch(0, 2) == one


@pytest.fixture(scope="module")
def shards(emoji_shards, tmp_path_factory):
    folder = cut_shard(emoji_shards / "train-000000.tar", tmp_path_factory.mktemp("relayout"), SAMPLES)
    return resolve_shards(f"{folder}/train-*.tar")


def step_keys(shards, layout: Layout, origin: Layout, first_step: int, steps: int) -> list[set[str]]:
    """The keys of each global step (all ranks) from `first_step` on, read in `layout` for an epoch begun on
    `origin`."""
    accum = GLOBAL_BATCH // (layout.world * layout.batch_size)
    per_step = [set() for _ in range(steps)]
    for rank in range(layout.world):
        loader = make_train_loader(shards, batch_size=layout.batch_size, image_size=8, epoch=0, seed=0, rank=rank,
                                   world_size=layout.world, workers=layout.workers,
                                   batches_per_epoch=accum * SAMPLES // GLOBAL_BATCH, skip_batches=first_step * accum,
                                   shuffle_buffer=16, origin=origin)
        for index, batch in enumerate(loader):
            if index // accum < steps:
                per_step[index // accum].update(batch["key"])
    return per_step


def test_two_then_one_then_three_ranks_read_the_epoch_of_two(shards):
    two = train_layout(2, 0, 12)
    uninterrupted = step_keys(shards, two, two, 0, 4)
    assert set().union(*uninterrupted) and len(set().union(*uninterrupted)) == SAMPLES  # every sample, once
    resumed = (step_keys(shards, two, two, 0, 1) + step_keys(shards, train_layout(1, 0, 12), two, 1, 1)
               + step_keys(shards, train_layout(3, 2, 8), two, 2, 2))
    assert resumed == uninterrupted


def test_one_then_two_ranks_with_workers_read_the_epoch_of_one(shards):
    one = train_layout(1, 2, 24)
    uninterrupted = step_keys(shards, one, one, 0, 4)
    resumed = step_keys(shards, one, one, 0, 2) + step_keys(shards, train_layout(2, 1, 6), one, 2, 2)
    assert resumed == uninterrupted
