"""A GGUF LLM de-quantized once: transformers converts a GGUF file to float weights on every load (about 24 s for
the bundled SmolLM2-135M on 2 cores, paid by every align, finetune, chat and evaluation), so the converted model
and its tokenizer are saved once as a Hugging Face folder and later loads read that folder.

Where: $MMTOOL_CACHE, else $XDG_CACHE_HOME/mmtool, else ~/.cache/mmtool; one `gguf/<stem>-<sha256[:16]>/` folder
per GGUF file content, so a changed file is converted again. The folder is written beside its final name and
renamed into place: it appears whole or not at all, and when another process finished first its copy is kept.
A cache that cannot be written costs only the time (a one-line note on stderr).

The conversion itself reads the file once: transformers parses the GGUF metadata for the tokenizer, the config and
the weights in turn and rebuilds gguf's tensor-name table for each of the model's ~400 modules; both are read-only
and depend only on their arguments, so one conversion shares them (bench/gguf_conversion.py).
"""
import contextlib
import copy
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from mmtool.checkpoint import file_sha256


def cache_root() -> Path:
    if os.environ.get("MMTOOL_CACHE"):
        return Path(os.environ["MMTOOL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmtool"


def converted_folder(gguf: Path) -> Path:
    return cache_root() / "gguf" / f"{gguf.stem}-{file_sha256(gguf)[:16]}"


def load_gguf(folder: str, gguf_file: str, dtype: torch.dtype):
    """(tokenizer, model) of `folder/gguf_file`, from the converted copy when there is one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = converted_folder(Path(folder) / gguf_file)
    if (converted / "config.json").is_file():
        return (AutoTokenizer.from_pretrained(converted),
                AutoModelForCausalLM.from_pretrained(converted, dtype=dtype))
    with gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    try:
        save_converted(converted, tokenizer, model)
    except OSError as err:
        print(f"note: could not keep the converted {gguf_file} in {converted} ({err.strerror or err}); "
              "the next load converts it again", file=sys.stderr)
    return tokenizer, model.to(dtype)


@contextlib.contextmanager
def gguf_parsed_once():
    """Within the block, gguf's file reader and tensor-name table are built once per distinct argument."""
    import gguf  # transformers imports both names from the gguf module at each call, so the swap reaches it

    reader, name_table = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = functools.cache(reader), functools.cache(name_table)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_table


def save_converted(converted: Path, tokenizer, model) -> None:
    converted.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=converted.parent, prefix=f".{converted.name}.", suffix=".tmp"))
    try:
        # The weights are floats already; only transformers' GGUF marker would refuse save_pretrained.
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        safetensors.torch.save_model(model, str(staging / "model.safetensors"))  # tied weights stored once
        tokenizer.save_pretrained(staging)
        if converted.exists() and not (converted / "config.json").is_file():
            shutil.rmtree(converted)  # an unusable leftover (not written by this module: its copies are whole)
        try:
            os.rename(staging, converted)
        except OSError:
            if not (converted / "config.json").is_file():
                raise  # not "another process was first": a real failure
    finally:
        shutil.rmtree(staging, ignore_errors=True)
