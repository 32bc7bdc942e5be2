"""Stage 2 with the real bundled LLM: the projector learns (val answer loss falls) and the model answers."""
import json

import pytest
import torch

from stage2_projector.checkpoint import build_vlm, load_vlm
from stage2_projector.config import AlignConfig, DataConfig, ModelConfig, TrainConfig
from stage2_projector.evaluate import evaluate_answer_loss
from stage2_projector.train import align, make_val_set, val_batches
from stage3_llm.generate import generate
from tests.helpers.tiny_vlm import save_tiny_clip

pytestmark = pytest.mark.slow
STEPS = 40  # long enough that the bound below sits far from every measured ratio


def test_projector_learns_on_smollm2_and_the_aligned_model_answers(smollm2, emoji_shards, tmp_path):
    clip_path = save_tiny_clip(tmp_path / "clip.pt")
    cfg = AlignConfig(
        model=ModelConfig(vision=str(clip_path), llm="llama"),
        data=DataConfig(train=f"{emoji_shards}/train-*.tar", val=f"{emoji_shards}/val-*.tar", val_samples=8,
                        batch_size=4, workers=0),
        train=TrainConfig(max_steps=STEPS, lr=2e-3, warmup_steps=2, log_every=10,
                          deepspeed="configs/deepspeed/zero0_bf16.json"))
    bundle = build_vlm(cfg, clip_path, llm=smollm2)
    val_set = make_val_set(cfg, bundle.record["vision"]["image_size"])
    n = bundle.num_image_tokens
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        before = evaluate_answer_loss(bundle.model.eval(), val_batches(bundle, cfg, val_set, torch.device("cpu"),
                                                                       torch.float32))

    after = align(cfg, tmp_path / "run", bundle=bundle)
    assert after["answer_tokens"] == before["answer_tokens"] > 0
    # after / before over seeds 0-2, bf16 and fp32, on an AMD EPYC: 0.83-0.85 at 40 steps (0.87-1.00 at 12 steps)
    assert after["answer_loss"] < 0.92 * before["answer_loss"], (before, after)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [10, 20, 30, 40]

    aligned = load_vlm(tmp_path / "run", smollm2)
    streamed = []
    image = val_set["image"][0]
    tokens = generate(aligned.model, aligned.tokenizer, image, "What is shown in this image?", n, max_new_tokens=8,
                      on_text=streamed.append)
    assert 0 < len(tokens) <= 8
    assert "".join(streamed) == aligned.tokenizer.decode(tokens, skip_special_tokens=True)
