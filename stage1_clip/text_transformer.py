"""CLIP's text tower: a causal transformer over tokens, read out at the end-of-text token.

Token convention (stage1_clip.tokenizer): `[bos] pieces... [eos] pad pad...`, padded with `pad_id`. The causal mask
makes the eos position a summary of the whole caption that no padding can reach.
"""
import torch
from torch import nn

from stage1_clip.attention import Transformer


class TextTransformer(nn.Module):
    def __init__(self, vocab_size: int, context_length: int = 77, width: int = 512, layers: int = 12,
                 heads: int = 8, mlp_ratio: float = 4.0, pad_id: int = 0, grad_checkpointing: bool = False):
        super().__init__()
        self.output_width = width
        self.context_length = context_length
        self.pad_id = pad_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, causal=True,
                                       grad_checkpointing=grad_checkpointing)
        self.ln_final = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        assert T <= self.context_length, f"{T} tokens exceed the context length {self.context_length}"
        x = self.token_embedding(tokens) + self.positional_embedding[:T]  # [B, T, D]
        x = self.transformer(x)[-1]  # [B, T, D]
        eot = (tokens != self.pad_id).sum(-1) - 1  # [B]; eos is the last non-pad token
        x = x[torch.arange(B, device=tokens.device), eot]  # [B, D]
        return self.ln_final(x)  # [B, D]; LayerNorm is per token, so pooling first is the same and cheaper
