"""Stage 3 under ZeRO-3 with 2 CPU processes: LoRA trains, the adapter and projector are gathered from the
partitions when saved, and the saved model reloads (in one plain process) to the loss the run reported."""
import json
import subprocess
import sys

import pytest
import torch

from stage3_llm.checkpoint import load_finetuned
from tests.helpers.distributed import free_port
from tests.stage3_llm.test_finetune import config, parts, records, val_loss  # noqa: F401 (parts is a fixture)
from tests.stage1_clip.test_train_e2e import clean_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_zero3_two_ranks_train_and_reload(parts, tmp_path):  # noqa: F811
    out = tmp_path / "zero3"
    sets = [f"model.base={parts / 'align'}", f"data.train={parts / 'instruct' / 'train.json'}",
            f"data.val={parts / 'instruct' / 'train.json'}", "data.batch_size=3", "train.max_steps=4",
            "train.lr=5e-3", "train.warmup_steps=1", "train.log_every=1", "model.lora.r=4",
            "model.lora.target_modules=[q_proj, v_proj, down_proj, lm_head]",
            "train.deepspeed=configs/deepspeed/zero3_bf16.json"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "mmtool", "finetune", "--config", "configs/finetune/emoji.yaml",
               "--out", str(out), *[arg for item in sets for arg in ("--set", item)]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=clean_env())
    assert (out / "eval.json").is_file(), result.stderr[-3000:]
    val = records(out, "val")
    assert val[-1]["answer_loss"] < val[0]["answer_loss"]
    bundle = load_finetuned(out)
    reported = json.loads((out / "eval.json").read_text())["answer_loss"]
    # the run evaluated with bf16 autocast, the reload in float32
    assert val_loss(bundle, parts)["loss"].item() == pytest.approx(reported, rel=2e-2)
    lora_b = [p for name, p in bundle.model.llm.named_parameters() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(p) > 0 for p in lora_b)  # gathered, not empty partitions
