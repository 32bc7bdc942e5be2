"""SentencePiece tokenizer for the from-scratch text tower, serialisable into checkpoints."""
import io
from pathlib import Path

import sentencepiece as spm
import torch

from mmtool.checkpoint import atomic_write
from mmtool.errors import MmtoolError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class SentencePieceTokenizer:
    """Sequences are `[bos] pieces... [eos] pad...`; the text tower pools at the eos position."""

    def __init__(self, model_bytes: bytes):
        self.model_bytes = bytes(model_bytes)
        self.processor = spm.SentencePieceProcessor(model_proto=self.model_bytes)

    @classmethod
    def train(cls, texts, vocab_size: int) -> "SentencePieceTokenizer":
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise MmtoolError("cannot train a tokenizer: no non-empty captions")
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=buffer,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # small corpora cannot always fill the requested vocab
            model_type="unigram",
            normalization_rule_name="nmt_nfkc_cf",  # case-folded, as CLIP lower-cases captions
            character_coverage=1.0,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            minloglevel=2,
        )
        return cls(buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "SentencePieceTokenizer":
        path = Path(path)
        if not path.is_file():
            raise MmtoolError(f"tokenizer model not found: {path}")
        try:
            return cls(path.read_bytes())
        except RuntimeError:
            raise MmtoolError(f"{path}: not a sentencepiece model") from None

    def save(self, path: str | Path) -> None:
        """Written whole or not at all: a later run reuses the file it finds."""
        atomic_write(Path(path), lambda tmp: tmp.write_bytes(self.model_bytes))

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def __call__(self, texts: list[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns input_ids and attention_mask, both [B, context_length]."""
        ids = torch.full((len(texts), context_length), PAD_ID, dtype=torch.long)
        for row, pieces in enumerate(self.processor.encode(list(texts))):
            seq = [BOS_ID, *pieces[: context_length - 2], EOS_ID]
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids, (ids != PAD_ID).long()
