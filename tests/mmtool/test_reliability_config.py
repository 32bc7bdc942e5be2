"""Issue 16, finding 8: out-of-range numbers are refused when the config loads, in one line naming key and value."""
import pytest

from mmtool.config import load_config
from mmtool.errors import MmtoolError
from stage1_clip.config import ClipConfig
from stage2_projector.config import AlignConfig
from stage3_llm.config import FinetuneConfig

pytestmark = pytest.mark.faults

STAGES = [ClipConfig, AlignConfig, FinetuneConfig]


@pytest.mark.parametrize("cls", STAGES)
@pytest.mark.parametrize("key,value,shown", [
    ("train.lr", ".nan", "nan"), ("train.lr", ".inf", "inf"), ("train.lr", "-1e-4", "-0.0001"),
    ("train.accum_steps", "0", "0"), ("data.batch_size", "0", "0"), ("train.grad_clip", "-1", "-1.0"),
    ("train.keep_states", "0", "0"), ("train.max_steps", "-5", "-5"), ("train.warmup_steps", "-1", "-1"),
    ("train.epochs", "0", "0"), ("train.log_every", "0", "0"), ("train.max_nonfinite_steps", "0", "0"),
    ("train.save_every", "-1", "-1"), ("train.eval_every", "-1", "-1"),
])
def test_out_of_range_values_are_refused_naming_key_and_value(cls, key, value, shown):
    with pytest.raises(MmtoolError) as caught:
        load_config(cls, None, [f"{key}={value}"])
    message = str(caught.value)
    assert message.startswith(f"config.{key}: must be ") and message.endswith(f", got {shown}")
    assert "\n" not in message


@pytest.mark.parametrize("cls", STAGES)
def test_the_edge_of_each_range_is_accepted(cls):
    """lr 0 (frozen), grad_clip 0 (no clipping), warmup 0 and max_steps 0 (the length comes from epochs)."""
    cfg = load_config(cls, None, ["train.lr=0", "train.grad_clip=0", "train.warmup_steps=0", "train.max_steps=0",
                                  "train.accum_steps=1", "data.batch_size=1", "train.keep_states=1", "train.epochs=1"])
    assert cfg.train.grad_clip == 0 and cfg.data.batch_size == 1
