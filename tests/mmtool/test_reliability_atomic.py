"""Issue 16, finding 11: the LoRA adapter/ folder and tokenizer.model are written whole or not at all."""
from pathlib import Path

import pytest
import torch

from stage1_clip.tokenizer import SentencePieceTokenizer
from stage3_llm.checkpoint import ADAPTER_DIR, save_finetuned

pytestmark = pytest.mark.faults


class Crash(Exception):
    pass


class FakeLlm:
    """Writes an adapter the way peft does, file by file; `crash_after` files in, the process 'dies'."""

    def __init__(self, weights: bytes, crash_after: int | None = None):
        self.weights, self.crash_after = weights, crash_after

    def save_pretrained(self, folder: str, state_dict: dict, save_embedding_layers: bool) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(["adapter_config.json", "adapter_model.safetensors"]):
            if i == self.crash_after:
                raise Crash()
            (Path(folder) / name).write_bytes(self.weights)


def save(out: Path, llm: FakeLlm) -> None:
    save_finetuned(out, {"finetune": {"lora": True}}, {"llm.lora_A": torch.zeros(2)}, llm, lora=True)


def test_a_crash_while_saving_the_adapter_leaves_the_previous_one_whole(tmp_path):
    save(tmp_path, FakeLlm(b"old"))
    (tmp_path / ADAPTER_DIR / "stale.bin").write_bytes(b"from an older peft")
    with pytest.raises(Crash):
        save(tmp_path, FakeLlm(b"new", crash_after=1))
    adapter = tmp_path / ADAPTER_DIR
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == {
        "adapter_config.json": b"old", "adapter_model.safetensors": b"old", "stale.bin": b"from an older peft"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "vlm.pt", "vlm.safetensors"]  # no temp left

    save(tmp_path, FakeLlm(b"new"))
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == {
        "adapter_config.json": b"new", "adapter_model.safetensors": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "vlm.pt", "vlm.safetensors"]


def test_a_crash_while_saving_the_tokenizer_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    texts = [f"a red apple number {i}" for i in range(50)] + [f"the blue sky over {i} hills" for i in range(50)]
    tokenizer = SentencePieceTokenizer.train(texts, vocab_size=40)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"the previous run's tokenizer")
    real_write = Path.write_bytes

    def half_then_crash(self, data):
        real_write(self, data[:len(data) // 2])
        raise Crash()

    monkeypatch.setattr(Path, "write_bytes", half_then_crash)
    with pytest.raises(Crash):
        tokenizer.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == b"the previous run's tokenizer"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.model"]
    tokenizer.save(path)
    assert SentencePieceTokenizer.load(path).vocab_size == tokenizer.vocab_size
