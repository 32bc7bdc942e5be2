"""Checkpoints saved by an earlier release still load and give the outputs they gave then."""
from pathlib import Path

import pytest
import torch

from stage1_clip.checkpoint import load_clip
from stage2_projector.checkpoint import load_vlm
from stage3_llm.checkpoint import load_finetuned

RELEASE = Path(__file__).parent / "fixtures" / "release_0_1"
LLM = str(RELEASE / "llm")


@pytest.fixture(scope="module")
def reference():
    return torch.load(RELEASE / "reference.pt", weights_only=True)


@pytest.mark.parametrize("name", ["clip.pt", "clip.safetensors"])
def test_clip_embeddings_unchanged(reference, name):
    clip = load_clip(RELEASE / name)
    ids, mask = clip.tokenize(reference["texts"])
    with torch.no_grad():
        torch.testing.assert_close(clip.model.encode_image(reference["images"]), reference["clip_image"])
        torch.testing.assert_close(clip.model.encode_text(ids, mask), reference["clip_text"])


def test_aligned_logits_unchanged(reference):
    model = load_vlm(RELEASE / "aligned", LLM).model
    with torch.no_grad():
        logits = model(reference["input_ids"], None, reference["images"][:1])["logits"]
    torch.testing.assert_close(logits, reference["aligned_logits"])


def test_finetuned_adapter_logits_unchanged(reference):
    model = load_finetuned(RELEASE / "finetuned", LLM).model.eval()
    with torch.no_grad():
        logits = model(reference["input_ids"], None, reference["images"][:1])["logits"]
    torch.testing.assert_close(logits, reference["finetuned_logits"])
