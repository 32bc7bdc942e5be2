"""A trained CLIP as one self-contained file: config, tokenizer and weights (mmtool.checkpoint format)."""
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mmtool.checkpoint import load_model, save_model
from mmtool.config import from_dict, to_dict
from stage1_clip.config import ClipConfig
from stage1_clip.model import CLIP
from stage1_clip.tokenizer import SentencePieceTokenizer

KIND = "clip"


@dataclass
class ClipBundle:
    config: ClipConfig
    model: CLIP
    tokenizer: object  # SentencePieceTokenizer or HFTokenizerAdapter: (texts, context_length) -> (ids, mask)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(texts, self.config.model.text.context_length)


def tokenizer_extras(tokenizer) -> dict:
    if isinstance(tokenizer, SentencePieceTokenizer):
        return {"tokenizer.model": tokenizer.model_bytes}
    return {"tokenizer.json": tokenizer.serialize()}


def clip_extras(config: ClipConfig, tokenizer, model: CLIP) -> dict:
    """The non-tensor files a checkpoint carries: the tokenizer and any HF tower's architecture."""
    extras = tokenizer_extras(tokenizer)
    if config.model.text.type == "hf":
        extras["hf_text_config.json"] = json.dumps(model.text.config_dict())
    if config.model.vision.type == "hf":
        extras["hf_vision_config.json"] = json.dumps(model.vision.config_dict())
    return extras


def save_clip(path: Path, config: ClipConfig, state_dict: dict, tokenizer, model: CLIP) -> None:
    save_model(path, KIND, to_dict(config), state_dict, clip_extras(config, tokenizer, model))


def load_clip(path: str | Path) -> ClipBundle:
    payload = load_model(path, KIND)
    return clip_from_parts(payload["config"], payload["extras"], payload["state_dict"], where=str(path))


def clip_from_parts(config_dict: dict, extras: dict, state_dict: dict, where: str) -> ClipBundle:
    """A bundle from a checkpoint's three parts (also how safetensors export folders are read back)."""
    config = from_dict(ClipConfig, config_dict, where=f"{where}:config")
    if "tokenizer.model" in extras:
        tokenizer = SentencePieceTokenizer(extras["tokenizer.model"])
        vocab_size, hf_config = tokenizer.vocab_size, None
    else:
        from stage1_clip.hf_text import HFTokenizerAdapter

        tokenizer = HFTokenizerAdapter(extras["tokenizer.json"])
        vocab_size, hf_config = None, json.loads(extras["hf_text_config.json"])
    # Weights come from the state dict: no pretrained file is read, so none needs to be installed.
    model_cfg = replace(config.model, vision=replace(config.model.vision, pretrained=False))
    hf_vision_config = json.loads(extras["hf_vision_config.json"]) if "hf_vision_config.json" in extras else None
    model = CLIP(model_cfg, config.loss, vocab_size, hf_config, hf_vision_config)
    model.load_state_dict(state_dict)
    return ClipBundle(config, model.eval(), tokenizer)
