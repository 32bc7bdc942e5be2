"""A Hugging Face text encoder as the text tower (LiT-style: often pretrained and locked), and its tokenizer.

Both can be rebuilt from what an mmtool checkpoint stores: the tower from `config_dict()` (weights come from the
checkpoint's state dict), the tokenizer from `serialize()` (the `tokenizer.json` text).
"""
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from mmtool.errors import MmtoolError

POOLINGS = ("mean", "cls")


class HFTextTower(nn.Module):
    def __init__(self, model: PreTrainedModel, pooling: str = "mean", grad_checkpointing: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise MmtoolError(f"model.text.hf_pooling: unknown pooling {pooling!r} (known: {', '.join(POOLINGS)})")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT's tanh pooler is unused here; left in, its weights would get no gradient
        if grad_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        self.model = model
        self.pooling = pooling
        self.output_width = model.config.hidden_size

    @classmethod
    def from_pretrained(cls, path: str | Path, pooling: str = "mean", grad_checkpointing: bool = False):
        """Loads a local folder, never the network."""
        if not (Path(path) / "config.json").is_file():
            raise MmtoolError(f"{path}: not a Hugging Face model folder (no config.json)")
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        return cls(model, pooling, grad_checkpointing)

    @classmethod
    def from_config_dict(cls, config: dict, pooling: str = "mean", grad_checkpointing: bool = False):
        """Same architecture, random weights: for a checkpoint whose state dict is loaded next."""
        model = AutoModel.from_config(AutoConfig.for_model(**config))
        return cls(model, pooling, grad_checkpointing)

    def config_dict(self) -> dict:
        return self.model.config.to_dict()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, D]
        if self.pooling == "cls":
            return x[:, 0]  # [B, D]
        mask = attention_mask.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
        return (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, D]; sentence-transformers' mean pooling


class HFTokenizerAdapter:
    """A `tokenizers` tokenizer behind mmtool's tokenizer interface: `(texts, context_length) -> (ids, mask)`."""

    def __init__(self, tokenizer_json: str):
        self.tokenizer_json = tokenizer_json
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        padding = self.tokenizer.padding
        self.pad_id = padding["pad_id"] if padding else 0  # any id will do where the attention mask is 0

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "HFTokenizerAdapter":
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise MmtoolError(f"{path}: no tokenizer.json (only fast tokenizers are supported)")
        return cls(file.read_text(encoding="utf-8"))

    def serialize(self) -> str:
        return self.tokenizer_json

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: list[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns input_ids and attention_mask, both [B, context_length]; special tokens survive truncation."""
        self.tokenizer.enable_truncation(max_length=context_length)
        self.tokenizer.enable_padding(length=context_length, pad_id=self.pad_id)
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask
