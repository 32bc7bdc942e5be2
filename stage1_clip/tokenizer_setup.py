"""Which tokenizer a run uses: the HF tower's own, a given sentencepiece model, or one trained on the captions."""
import itertools
from collections import Counter
from pathlib import Path

from mmtool import distributed
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.errors import MmtoolError
from mmtool.pretrained import resolve_model_dir
from stage1_clip.config import ClipConfig
from stage1_clip.tokenizer import SentencePieceTokenizer


def iter_captions(urls: list[str], limit: int):
    """Every caption phrasing of the first `limit` usable samples, read without decoding any image."""
    for sample in itertools.islice(parsed_samples(urls, Counter()), limit):
        yield from sample.captions


def train_tokenizer(urls: list[str], vocab_size: int, limit: int) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(list(iter_captions(urls, limit)), vocab_size)


def prepare_tokenizer(cfg: ClipConfig, train_urls: list[str], out_dir: Path):
    """Rank 0 trains (when needed) and writes out_dir/tokenizer.model; the other ranks read it."""
    if cfg.model.text.type == "hf":
        from stage1_clip.hf_text import HFTokenizerAdapter

        return HFTokenizerAdapter.from_pretrained(resolve_model_dir(cfg.model.text.hf_path))
    if cfg.tokenizer.path:
        return SentencePieceTokenizer.load(cfg.tokenizer.path)
    path = out_dir / "tokenizer.model"
    if distributed.is_main() and not path.is_file():
        train_tokenizer(train_urls, cfg.tokenizer.vocab_size, cfg.tokenizer.train_samples).save(path)
    distributed.barrier()
    if not path.is_file():
        raise MmtoolError(f"tokenizer was not written to {path} (is --out on a shared filesystem?)")
    return SentencePieceTokenizer.load(path)
