"""Generation: mmtool's streamed greedy decoding equals a naive argmax loop, and `mmtool chat` prints it; in bf16
(chat's default) the LLM's logits stay within bf16 rounding of fp32's and the tower's inputs to it do not change."""
import io

import pytest
import torch
from PIL import Image

from mmtool.cpu_features import KEEP_SLOW_BF16
from mmtool.errors import MmtoolError
from stage2_projector.checkpoint import load_vlm
from stage3_llm.checkpoint import ready_to_answer
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
                     "--precision", "fp32", question).stdout
    assert printed == answer + "\n"

    ready_to_answer(bundle, "bf16")
    bf16_tokens = generate(bundle.model, bundle.tokenizer, image, question, n, max_new_tokens=12)
    printed = mmtool("chat", "--model", tmp_path / "vlm.pt", "--image", image_file, "--max-new-tokens", "12",
                     question).stdout
    assert printed == bundle.tokenizer.decode(bf16_tokens, skip_special_tokens=True) + "\n"
    refused = mmtool("chat", "--model", tmp_path / "vlm.pt", "--image", image_file, "--precision", "fp8", question,
                     check=False)
    assert refused.returncode == 2 and "--precision 'fp8': one of bf16, fp32" in refused.stderr
    missing = mmtool("chat", "--model", tmp_path / "vlm.pt", "--image", tmp_path / "nope.png", question, check=False)
    assert missing.returncode == 2 and "nope.png: file not found" in missing.stderr
    names = tmp_path / "names.txt"
    names.write_text("\n  \n")
    empty = mmtool("chat", "--model", tmp_path / "vlm.pt", "--image", image_file, "--tag-names", names, question,
                   check=False)
    assert empty.returncode == 2 and "names.txt: the name list holds no name" in empty.stderr
    names.write_text("hot pepper\n")
    untagged = mmtool("chat", "--model", tmp_path / "vlm.pt", "--image", image_file, "--tag-names", names,
                      "--llm", tmp_path / "no_llm_here", question, check=False)  # refused before the LLM loads
    assert untagged.returncode == 2 and "has no tower tags to add names to" in untagged.stderr


def test_bf16_answering_keeps_the_tower_in_fp32_and_the_logits_within_bf16_rounding(tmp_path, monkeypatch):
    monkeypatch.setenv(KEEP_SLOW_BF16, "1")  # bf16 on every CPU, emulated or not
    bundle = load_vlm(save_tiny_vlm(tmp_path))
    image = bundle.preprocess(_png((30, 160, 60)))
    ids = torch.tensor([prompt_ids(bundle.tokenizer, "What is shown?", bundle.num_image_tokens)])  # [1, T]
    with torch.no_grad():
        reference = bundle.model(ids, torch.ones_like(ids), image[None])["logits"][0].double()  # [T, V]
        image_tokens = bundle.model.encode_images(image[None])  # [1, N, D]
        ready_to_answer(bundle, "bf16")
        logits = bundle.model(ids, torch.ones_like(ids), image[None])["logits"][0].double()  # [T, V]
        assert torch.equal(bundle.model.encode_images(image[None]), image_tokens)  # tower and projector: fp32
    assert next(bundle.model.llm.parameters()).dtype == torch.bfloat16
    assert next(bundle.model.vision.parameters()).dtype == torch.float32
    # bf16 keeps 8 mantissa bits: each matmul's relative error is about 2^-8; through the tiny LLM's layers the
    # logits move by a few percent of their spread (2.3% here), far from random.
    assert (logits - reference).abs().max() < 0.1 * reference.std()
    with pytest.raises(MmtoolError, match="--precision 'fp16': one of bf16, fp32"):
        ready_to_answer(bundle, "fp16")


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 36), colour).save(buffer, format="PNG")
    return buffer.getvalue()
