"""train.threads: a positive count as given, a negative one as the rank's share of the usable cores less n."""
import pytest

from mmtool import distributed


@pytest.fixture
def cores(monkeypatch):
    def set_cores(count: int, local_ranks: int | None = None):
        monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(count)))
        if local_ranks is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))
    return set_cores


@pytest.mark.parametrize("requested, count, local_ranks, expected", [
    (None, 16, None, None), (0, 16, None, None), (3, 2, None, 3),
    (-2, 2, None, 1), (-2, 16, None, 14), (-1, 16, 4, 3), (-2, 16, 8, 1), (-8, 4, None, 1),
])
def test_threads_per_rank(cores, requested, count, local_ranks, expected):
    cores(count, local_ranks)
    assert distributed.intra_op_threads(requested) == expected
