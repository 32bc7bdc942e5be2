"""Multimodal RAG: the index's best image for a question, then the vision-language model's answer about it."""
import hashlib
from collections import Counter
from pathlib import Path
from typing import Callable

from mmtool.data.reading.images import BadSample
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.errors import MmtoolError
from mmtool.index.embed import thumbnail_name
from mmtool.index.image_index import Hit, ImageIndex
from stage3_llm.generate import generate


def _original_bytes(path: str) -> bytes | None:
    """The file, or the sample inside a webdataset shard (`SHARD#KEY`, found by a scan of that shard)."""
    if Path(path).is_file():
        return Path(path).read_bytes()
    shard, _, key = path.rpartition("#")
    if shard and Path(shard).is_file():
        return next((raw.image for raw in parsed_samples([shard], Counter()) if raw.key == key), None)
    return None


def hit_image(index: ImageIndex, hit: Hit) -> tuple[bytes, str]:
    """The hit's image bytes and where they came from: "original" while its file or shard sample still holds the
    indexed content (same sha256), else "thumbnail", the index's stored copy (JPEG, at most 160 px)."""
    original = _original_bytes(hit.path)
    if original is not None and hashlib.sha256(original).hexdigest() == hit.sha256:
        return original, "original"
    thumb = index.folder / "thumbs" / thumbnail_name(hit.sha256)
    if not thumb.is_file():
        raise MmtoolError(f"{index.folder}: image {hit.path} changed or is gone, and its thumbnail {thumb} too")
    return thumb.read_bytes(), "thumbnail"


def ask(index: ImageIndex, bundle, question: str, k: int = 1, max_new_tokens: int = 64, temperature: float = 0.0,
        on_text: Callable[[str], None] | None = None) -> dict:
    """Searches the index with the question, answers it about the top hit; `candidates` are the k best hits."""
    hits = index.search(text=question, k=k)
    image, source = hit_image(index, hits[0])
    try:
        pixels = bundle.preprocess(image)
    except BadSample as err:
        raise MmtoolError(f"{hits[0].path} ({source}): {err}") from None
    tokens = generate(bundle.model, bundle.tokenizer, pixels, question, bundle.num_image_tokens, max_new_tokens,
                      temperature, on_text)
    return {"question": question, "answer": bundle.tokenizer.decode(tokens, skip_special_tokens=True),
            "image": {**hits[0].as_dict(), "image_source": source}, "candidates": [hit.as_dict() for hit in hits]}
