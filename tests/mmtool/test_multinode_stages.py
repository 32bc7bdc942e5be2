"""Stages 2 and 3 launch on two "nodes" too (the launch path only: that they start, train on 2 ranks and save):
`mmtool align` under two torchrun agents with a c10d rendezvous, `mmtool finetune` under two deepspeed launchers
with a two-host hostfile. Stage 1's numerics across nodes are tests/mmtool/test_multinode.py's."""
import pytest

from tests.helpers.multinode_launch import deepspeed_nodes, run_together, torchrun_nodes
from tests.helpers.tiny_vlm import save_tiny_clip, save_tiny_llm
from tests.stage3_llm.test_finetune import parts, records  # noqa: F401 (parts is a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def sets(*items: str) -> list[str]:
    return [arg for item in (*items, "train.max_steps=2", "train.warmup_steps=1", "train.log_every=1",
                             "train.deepspeed=configs/deepspeed/fp32.json") for arg in ("--set", item)]


def test_align_on_two_torchrun_nodes(emoji_shards, tmp_path):
    clip, llm, out = save_tiny_clip(tmp_path / "clip.pt"), save_tiny_llm(tmp_path / "llm"), tmp_path / "align"
    logs = run_together(torchrun_nodes(["mmtool", "align", "--vision", str(clip), "--llm", str(llm), "--out",
                                        str(out), *sets(f"data.train={emoji_shards}/train-*.tar", "data.val=null",
                                                        "data.batch_size=4")]))
    assert "global batch 2 rank(s) x 4 x 1 accumulated" in "".join(log.stdout for log in logs)
    assert [r["step"] for r in records(out, "train")] == [1, 2] and (out / "vlm.pt").is_file()


def test_finetune_on_two_deepspeed_launcher_nodes(parts, tmp_path):  # noqa: F811
    out = tmp_path / "finetune"
    command = ["mmtool", "finetune", "--config", "configs/finetune/emoji.yaml", "--out", str(out),
               *sets(f"model.base={parts / 'align'}", f"data.train={parts / 'instruct' / 'train.json'}",
                     "data.val=null", "data.batch_size=3", "model.lora.r=4")]
    logs = run_together(deepspeed_nodes(command, tmp_path / "hostfile"))
    assert "global batch 2 rank(s) x 3 x 1 accumulated" in "".join(log.stdout for log in logs)
    assert [r["step"] for r in records(out, "train")] == [1, 2] and (out / "vlm.pt").is_file()
