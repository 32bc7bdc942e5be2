"""Stage 3's conversation batches of an epoch resumed on another number of ranks: the steps read on exactly as the
uninterrupted run would have, every conversation once (mmtool/data/reading/relayout.py)."""
from mmtool.data.reading.relayout import Layout
from stage3_llm.conversations import epoch_batches

COUNT, GLOBAL_BATCH, STEPS = 36, 6, 6


def step_items(world: int, batch_size: int, origin: Layout | None, steps: range) -> list[list[int]]:
    accum = GLOBAL_BATCH // (world * batch_size)
    dealt = [epoch_batches(COUNT, batch_size, 0, 0, rank, world, STEPS * accum, origin=origin) for rank in range(world)]
    return [sorted(i for rank in range(world) for batch in dealt[rank][step * accum:(step + 1) * accum] for i in batch)
            for step in steps]


def test_two_ranks_then_three_then_one_read_the_epoch_of_two():
    two = Layout(2, 1, 3)
    uninterrupted = step_items(2, 3, None, range(STEPS))
    assert sorted(i for step in uninterrupted for i in step) == list(range(COUNT))
    resumed = step_items(2, 3, None, range(2)) + step_items(3, 2, two, range(2, 4)) + step_items(1, 3, two, range(4, 6))
    assert resumed == uninterrupted


def test_without_an_origin_ranks_deal_round_robin():
    assert epoch_batches(8, 2, 0, 0, 1, 2, 2) == epoch_batches(8, 2, 0, 0, 1, 2, 2, origin=Layout(2, 1, 2))
