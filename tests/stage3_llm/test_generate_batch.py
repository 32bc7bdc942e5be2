"""Batched greedy generation (left padding, KV cache, stop when every row has ended) gives exactly the token ids
of one-at-a-time generation, including rows that end early."""
import pytest
import torch

from stage2_projector.checkpoint import load_vlm
from stage3_llm.generate import generate, generate_batch
from tests.helpers.tiny_vlm import save_tiny_vlm

pytestmark = pytest.mark.slow

QUESTIONS = ["What is shown?", "Describe this image briefly.", "Is this a red apple?", "What is shown?"]


def test_batched_answers_equal_sequential_answers(tmp_path):
    bundle = load_vlm(save_tiny_vlm(tmp_path))
    size, n = bundle.record["vision"]["image_size"], bundle.num_image_tokens
    torch.manual_seed(0)
    images = torch.randn(len(QUESTIONS), 3, size, size)  # [B, 3, S, S]: a different picture per row
    tokenizer = bundle.tokenizer
    sequential = [generate(bundle.model, tokenizer, image, question, n, max_new_tokens=10)
                  for image, question in zip(images, QUESTIONS)]
    assert len({tuple(ids) for ids in sequential}) > 1, "the rows should not all answer alike"
    assert generate_batch(bundle.model, tokenizer, images, QUESTIONS, n, max_new_tokens=10) == sequential

    # Declare the token the first row produces third the end of turn: that row stops there, the others go on.
    early = sequential[0][2]
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(early)
    sequential = [generate(bundle.model, tokenizer, image, question, n, max_new_tokens=10)
                  for image, question in zip(images, QUESTIONS)]
    assert sequential[0][-1] == early and len(sequential[0]) <= 3
    assert max(len(ids) for ids in sequential) == 10
    assert generate_batch(bundle.model, tokenizer, images, QUESTIONS, n, max_new_tokens=10) == sequential
