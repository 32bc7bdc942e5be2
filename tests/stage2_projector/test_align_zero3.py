"""`mmtool align` under ZeRO-3 on 2 processes: the gathered checkpoint reloads to the run's own val loss."""
import json
import subprocess
import sys

import pytest
import torch

from mmtool.config import from_dict
from stage2_projector.checkpoint import load_vlm
from stage2_projector.config import AlignConfig
from stage2_projector.evaluate import evaluate_answer_loss
from stage2_projector.train import make_val_set, val_batches
from tests.helpers.distributed import free_port
from tests.stage1_clip.test_train_e2e import clean_env
from tests.helpers.tiny_vlm import save_tiny_clip, save_tiny_llm

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_zero3_two_ranks_align_and_reload(emoji_shards, tmp_path):
    clip_path, llm_dir, out = save_tiny_clip(tmp_path / "clip.pt"), save_tiny_llm(tmp_path / "llm"), tmp_path / "run"
    sets = [f"data.train={emoji_shards}/train-*.tar", f"data.val={emoji_shards}/val-*.tar", "data.batch_size=4",
            "data.val_samples=16", "train.max_steps=6", "train.lr=1e-2", "train.warmup_steps=1", "train.log_every=1",
            "train.deepspeed=configs/deepspeed/zero3_bf16.json", "train.threads=1"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "mmtool", "align", "--vision", str(clip_path), "--llm", str(llm_dir),
               "--out", str(out), *[arg for item in sets for arg in ("--set", item)]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=clean_env())
    assert (out / "vlm.pt").is_file(), result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == list(range(1, 7))

    bundle = load_vlm(out)
    state = torch.load(out / "vlm.pt", weights_only=True)["state_dict"]
    assert {name.split(".")[0] for name in state} == {"vision", "projector"}
    assert all(tensor.numel() > 0 for tensor in state.values())  # gathered, not ZeRO-3's empty placeholders
    cfg = from_dict(AlignConfig, bundle.record["align"], where="align")
    val_set = make_val_set(cfg, bundle.record["vision"]["image_size"])
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):  # as the run's zero3_bf16 evaluation
        metrics = evaluate_answer_loss(bundle.model, val_batches(bundle, cfg, val_set, torch.device("cpu"),
                                                                 torch.float32))
    saved = json.loads((out / "eval.json").read_text())
    assert metrics["answer_tokens"] == saved["answer_tokens"]
    assert metrics["answer_loss"] == pytest.approx(saved["answer_loss"], rel=1e-2)
