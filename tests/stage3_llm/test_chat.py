"""Generation: mmtool's streamed greedy decoding equals a naive argmax loop, and `mmtool chat` prints it."""
import io

import pytest
import torch
from PIL import Image

from stage2_projector.checkpoint import load_vlm
from stage3_llm.generate import generate, prompt_ids
from tests.stage1_clip.test_train_e2e import mmtool
from tests.helpers.tiny_vlm import save_tiny_vlm

pytestmark = pytest.mark.slow


def test_streamed_greedy_generation_equals_a_naive_loop_and_the_cli(tmp_path):
    bundle = load_vlm(save_tiny_vlm(tmp_path))
    image_file = tmp_path / "face.png"
    Image.new("RGB", (40, 36), (250, 200, 30)).save(image_file)
    image = bundle.preprocess(image_file.read_bytes())
    question, n = "What is shown?", bundle.num_image_tokens

    streamed = []
    tokens = generate(bundle.model, bundle.tokenizer, image, question, n, max_new_tokens=12, on_text=streamed.append)

    ids = torch.tensor([prompt_ids(bundle.tokenizer, question, n)])
    expected = []
    with torch.no_grad():
        for _ in range(12):  # no KV cache: the whole sequence again at every step
            logits = bundle.model(ids, torch.ones_like(ids), image[None])["logits"]
            expected.append(int(logits[0, -1].argmax()))
            if expected[-1] == bundle.tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[expected[-1]]])], dim=1)
    assert tokens == expected
    answer = bundle.tokenizer.decode(tokens, skip_special_tokens=True)
    assert "".join(streamed) == answer

    printed = mmtool("chat", "--model", tmp_path / "vlm.pt", "--image", image_file, "--max-new-tokens", "12",
                     question).stdout
    assert printed == answer + "\n"
    missing = mmtool("chat", "--model", tmp_path / "vlm.pt", "--image", tmp_path / "nope.png", question, check=False)
    assert missing.returncode == 2 and "nope.png: file not found" in missing.stderr
