"""The GGUF conversion cache: the second load reads the converted folder and gives the very model and tokenizer
the GGUF file gave; another file content gets another folder; a leftover without weights is replaced."""
from pathlib import Path

import pytest
import torch

from stage2_projector import gguf_cache
from stage2_projector.gguf_cache import converted_folder, load_gguf
from stage2_projector.llm import resolve_llm


def test_a_changed_file_gets_another_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTOOL_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"one")
    first = converted_folder(gguf)
    gguf.write_bytes(b"two")
    assert converted_folder(gguf) != first
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith("model-")


@pytest.mark.slow
def test_the_cached_copy_is_the_gguf_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTOOL_CACHE", str(tmp_path / "cache"))
    source = resolve_llm("llama")
    gguf = Path(source.path) / source.gguf_file
    folder = converted_folder(gguf)
    folder.mkdir(parents=True)
    (folder / "partial.safetensors").write_bytes(b"")  # a leftover without config.json: never read
    tokenizer, model = load_gguf(source.path, source.gguf_file, torch.float32)  # converted from the GGUF file
    assert (folder / "config.json").is_file() and not (folder / "partial.safetensors").exists()

    reads = []
    monkeypatch.setattr(gguf_cache, "save_converted", lambda *args: reads.append("converted again"))
    cached_tokenizer, cached_model = load_gguf(source.path, source.gguf_file, torch.float32)
    assert not reads and gguf.is_file()
    text = [{"role": "user", "content": "Is this a red apple?"}]
    assert (cached_tokenizer.apply_chat_template(text, tokenize=False)
            == tokenizer.apply_chat_template(text, tokenize=False))
    ids = tokenizer("an emoji of a red apple", return_tensors="pt")["input_ids"]
    assert cached_tokenizer("an emoji of a red apple", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    cached_state = cached_model.state_dict()
    assert cached_state.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, cached_state[name]), name
    with torch.no_grad():
        torch.testing.assert_close(cached_model(ids).logits, model(ids).logits, rtol=0, atol=0)
