"""The global batch a run keeps across rank counts, and its one-line refusals (mmtool/world_resize.py)."""
import pytest

from mmtool.errors import MmtoolError
from mmtool.world_resize import latest_layout, resolve_accum, resume_source, write_layout


def test_accumulation_follows_the_global_batch():
    assert resolve_accum(None, 3, batch_size=8, world=2, saved=None) == 3  # no global batch: as configured
    assert resolve_accum(64, 1, batch_size=8, world=2, saved=None) == 4
    assert resolve_accum(64, 4, batch_size=8, world=2, saved=None) == 4  # stated and consistent


def test_a_resumed_run_keeps_its_global_batch():
    saved = {"world": 2, "batch_size": 12, "accum_steps": 1}  # 24 samples per step
    assert resolve_accum(None, 1, batch_size=12, world=1, saved=saved) == 2
    assert resolve_accum(None, 1, batch_size=8, world=3, saved=saved) == 1
    assert resolve_accum(24, 1, batch_size=4, world=3, saved=saved) == 2


@pytest.mark.parametrize("call, words", [
    (dict(global_batch=64, accum_steps=1, batch_size=12, world=2, saved=None),
     "train.global_batch 64 is not a multiple of data.batch_size 12 x 2 rank(s)"),
    (dict(global_batch=64, accum_steps=2, batch_size=8, world=2, saved=None),
     "train.accum_steps 2 contradicts train.global_batch 64"),
    (dict(global_batch=None, accum_steps=1, batch_size=12, world=5, saved={"world": 2, "batch_size": 12,
                                                                           "accum_steps": 1}),
     "the resumed run's global batch 24 is not a multiple of data.batch_size 12 x 5 rank(s)"),
    (dict(global_batch=48, accum_steps=1, batch_size=12, world=1, saved={"world": 2, "batch_size": 12,
                                                                         "accum_steps": 1}),
     "train.global_batch 48: the run being resumed trains with a global batch of 24"),
])
def test_refusals_are_one_line(call, words):
    with pytest.raises(MmtoolError) as err:
        resolve_accum(**call)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_layout_is_read_back_from_the_latest_state(tmp_path):
    (tmp_path / "step4").mkdir()
    (tmp_path / "latest").write_text("step4")
    assert latest_layout(tmp_path) == ("step4", None)  # a state saved before layouts were recorded
    write_layout(tmp_path / "step4", world=2, batch_size=12, accum_steps=1)
    assert latest_layout(tmp_path) == ("step4", {"world": 2, "batch_size": 12, "accum_steps": 1})
    with pytest.raises(MmtoolError, match="no saved state"):
        latest_layout(tmp_path / "nothing")


def test_a_state_without_its_layout_resumes_only_on_its_own_ranks(tmp_path):
    tag = tmp_path / "step3"
    tag.mkdir()
    (tmp_path / "latest").write_text("step3")
    for rank in range(2):
        (tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert not resume_source(tmp_path, 2, "configs/deepspeed/zero2_bf16.json").universal
    with pytest.raises(MmtoolError, match="was saved on 2 ranks by an mmtool that did not record its global batch"):
        resume_source(tmp_path, 1, "configs/deepspeed/zero2_bf16.json")
