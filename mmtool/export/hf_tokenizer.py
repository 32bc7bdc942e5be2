"""mmtool's sentencepiece tokenizer as a transformers fast tokenizer giving the same ids.

The model proto carries everything SentencePiece does to text (nmt_nfkc_cf charsmap, whitespace rules, unigram
pieces and scores); transformers' converter turns that into a `tokenizers` pipeline. A template then frames each
caption as mmtool does, `[bos] pieces... [eos]`, and padding/truncation to the context length finish the row.
"""
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

from stage1_clip.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SentencePieceTokenizer


def sentencepiece_to_hf(tokenizer: SentencePieceTokenizer, context_length: int) -> PreTrainedTokenizerFast:
    """Call it as `hf(texts, padding="max_length", truncation=True, max_length=context_length)`; pieces beyond
    context_length - 2 are dropped before eos, like mmtool. Only text spelling a control piece ('<s>', '</s>',
    '<pad>', '<unk>') encodes differently: SentencePiece never matches those pieces, transformers reads them as the
    special tokens."""
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(tokenizer.model_bytes)
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    bos, eos = vocab[BOS_ID][0], vocab[EOS_ID][0]
    backend.post_processor = TemplateProcessing(single=f"{bos} $A {eos}", special_tokens=[(bos, BOS_ID), (eos, EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos,
                                   pad_token=vocab[PAD_ID][0], unk_token=vocab[UNK_ID][0],
                                   model_max_length=context_length, padding_side="right", truncation_side="right")
