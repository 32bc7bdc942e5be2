"""The GGUF conversion cache: the second load reads the converted folder and gives the very model and tokenizer
the GGUF file gave; another file content gets another folder; a leftover without weights is replaced; the
conversion reads the file once."""
from pathlib import Path

import gguf
import pytest
import torch

from stage2_projector import gguf_cache
from stage2_projector.gguf_cache import converted_folder, gguf_parsed_once, load_gguf
from stage2_projector.llm import resolve_llm


def test_a_changed_file_gets_another_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTOOL_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"one")
    first = converted_folder(gguf)
    gguf.write_bytes(b"two")
    assert converted_folder(gguf) != first
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith("model-")


def test_parsed_once_shares_within_the_block_and_restores_after():
    reader, name_table = gguf.GGUFReader, gguf.get_tensor_name_map
    llama = gguf.MODEL_ARCH.LLAMA
    with pytest.raises(RuntimeError), gguf_parsed_once():
        assert gguf.get_tensor_name_map(llama, 30) is gguf.get_tensor_name_map(llama, 30)
        assert gguf.get_tensor_name_map(llama, 30) is not gguf.get_tensor_name_map(llama, 2)
        raise RuntimeError("a failed conversion")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_table)
    assert gguf.get_tensor_name_map(llama, 30) is not gguf.get_tensor_name_map(llama, 30)


@pytest.mark.slow
def test_the_cached_copy_is_the_gguf_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTOOL_CACHE", str(tmp_path / "cache"))
    source = resolve_llm("llama")
    gguf_path = Path(source.path) / source.gguf_file
    folder = converted_folder(gguf_path)
    folder.mkdir(parents=True)
    (folder / "partial.safetensors").write_bytes(b"")  # a leftover without config.json: never read
    file_reads = []

    class CountedReader(gguf.GGUFReader):
        def __init__(self, path, *args, **kwargs):
            file_reads.append(path)
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountedReader)
    tokenizer, model = load_gguf(source.path, source.gguf_file, torch.float32)  # converted from the GGUF file
    assert len(file_reads) == 1  # the tokenizer, config and weights share one parse
    assert (folder / "config.json").is_file() and not (folder / "partial.safetensors").exists()

    reads = []
    monkeypatch.setattr(gguf_cache, "save_converted", lambda *args: reads.append("converted again"))
    cached_tokenizer, cached_model = load_gguf(source.path, source.gguf_file, torch.float32)
    assert not reads and gguf_path.is_file()
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
