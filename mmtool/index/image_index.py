"""ImageIndex: a folder holding a FAISS index of unit image embeddings (inner product = cosine), one metadata
record per vector, thumbnails, and the identity of the model that made the vectors.

    index/index.json     format, model identity (hash of its weights) and path, sizes, index type, count
    index/vectors.faiss  IndexFlatIP (exact) or IndexHNSWFlat (approximate, for large collections)
    index/items.jsonl    {"path", "caption", "fields", "sha256"} per vector, in vector order
    index/thumbs/        SHA256.jpg thumbnails for the web page
"""
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from mmtool.checkpoint import atomic_write
from mmtool.data.reading.images import BadSample
from mmtool.errors import MmtoolError
from mmtool.index.embed import EmbedReport, embed_items, image_bytes_to_pixels
from mmtool.index.embedding_models import load_encoder
from mmtool.index.sources import source_items

FORMAT = "mmtool.image_index/1"
INDEX_TYPES = ("flat", "hnsw")
HNSW_NEIGHBOURS = 32  # graph degree M: recall vs memory
HNSW_EF_SEARCH = 128  # candidates visited per query: recall vs latency


@dataclass
class Hit:
    rank: int
    score: float
    path: str
    caption: str | None
    fields: dict
    sha256: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def new_faiss_index(index_type: str, dim: int) -> faiss.Index:
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    raise MmtoolError(f"--index-type {index_type!r}: unknown (choose from {', '.join(INDEX_TYPES)})")


class ImageIndex:
    def __init__(self, folder: Path, meta: dict, vectors: faiss.Index, items: list[dict], encoder=None):
        self.folder, self.meta, self.vectors, self.items = Path(folder), meta, vectors, items
        self._encoder = encoder

    # building and growing ------------------------------------------------------------------------------------
    @classmethod
    def build(cls, source: str, model: str | Path, out: Path, index_type: str = "flat", batch_size: int = 64,
              progress: bool = True) -> tuple["ImageIndex", EmbedReport]:
        out = Path(out)
        if (out / "index.json").exists():
            raise MmtoolError(f"--out {out}: already holds an index; use `mmtool index add` or another folder")
        new_faiss_index(index_type, 1)  # bad --index-type fails before any embedding
        encoder = load_encoder(model)
        meta = {"format": FORMAT, "model": {"identity": encoder.identity, "path": str(Path(model).resolve())},
                "image_size": encoder.image_size, "index_type": index_type, "embed_dim": None, "count": 0}
        index = cls(out, meta, None, [], encoder)
        report = index._append(source, batch_size, progress)
        if not index.items:
            raise MmtoolError(f"SOURCE {source}: no readable image "
                              f"(unreadable: {len(report.unreadable)}, duplicates: {report.duplicates})")
        return index, report

    def add(self, source: str, model: str | Path | None = None, batch_size: int = 64,
            progress: bool = True) -> EmbedReport:
        """Embeds only the new images; duplicates of indexed content are skipped. `model` must be the same
        weights the index was built with (any format)."""
        if model is not None:
            self._encoder = self._checked(load_encoder(model), model)
        return self._append(source, batch_size, progress)

    def _append(self, source: str, batch_size: int, progress: bool) -> EmbedReport:
        known = {item["sha256"] for item in self.items}
        unusable = Counter()
        vectors, records, report = embed_items(source_items(source, unusable), self.encoder, self.folder / "thumbs",
                                               known, batch_size, progress)
        report.unusable = unusable  # counted as the items were read, so complete only now
        if records:
            if self.vectors is None:
                self.meta["embed_dim"] = int(vectors.shape[1])
                self.vectors = new_faiss_index(self.meta["index_type"], vectors.shape[1])
            self.vectors.add(np.ascontiguousarray(vectors))
            self.items.extend(records)
            self.save()
        return report

    def save(self) -> None:
        self.meta["count"] = len(self.items)
        atomic_write(self.folder / "vectors.faiss", lambda tmp: faiss.write_index(self.vectors, str(tmp)))
        lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in self.items)
        atomic_write(self.folder / "items.jsonl", lambda tmp: tmp.write_text(lines, encoding="utf-8"))
        atomic_write(self.folder / "index.json", lambda tmp: tmp.write_text(json.dumps(self.meta, indent=2) + "\n"))

    # opening and searching ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, model: str | Path | None = None) -> "ImageIndex":
        """`model` (checkpoint or export folder) embeds the queries; by default the one the index was built with."""
        folder = Path(folder)
        meta_path = folder / "index.json"
        if not meta_path.is_file():
            raise MmtoolError(f"{folder}: not an mmtool image index (no index.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise MmtoolError(f"{meta_path}: unknown index format {meta.get('format')!r}")
        vectors = faiss.read_index(str(folder / "vectors.faiss"))
        items = [json.loads(line) for line in (folder / "items.jsonl").read_text(encoding="utf-8").splitlines()]
        if not vectors.ntotal == len(items) == meta["count"]:
            raise MmtoolError(f"{folder}: inconsistent index ({vectors.ntotal} vectors, {len(items)} records, "
                              f"index.json says {meta['count']})")
        index = cls(folder, meta, vectors, items)
        if model is not None:
            index._encoder = index._checked(load_encoder(model), model)
        return index

    @property
    def encoder(self):
        if self._encoder is None:
            stored = self.meta["model"]["path"]
            if not Path(stored).exists():
                raise MmtoolError(f"{self.folder}: the model it was built with ({stored}) is gone; pass --model "
                                  f"with the same weights (checkpoint or export folder)")
            self._encoder = self._checked(load_encoder(stored), stored)
        return self._encoder

    def _checked(self, encoder, model) -> object:
        if encoder.identity != self.meta["model"]["identity"]:
            raise MmtoolError(f"--model {model}: different weights from the model this index was built with "
                              f"({self.meta['model']['path']}); vectors of two models cannot be mixed")
        return encoder

    def search(self, text: str | None = None, image: bytes | str | Path | None = None, k: int = 10) -> list[Hit]:
        """The k best images for a text or an image (bytes or a file path), best first."""
        if (text is None) == (image is None):
            raise MmtoolError("search: give exactly one of --text or --image")
        if text is not None:
            query = self.encoder.encode_texts([text])  # [1, D]
        else:
            if isinstance(image, (str, Path)):
                if not Path(image).is_file():
                    raise MmtoolError(f"--image {image}: file not found")
                image = Path(image).read_bytes()
            try:
                pixels = image_bytes_to_pixels(image, self.meta["image_size"])  # [1, 3, S, S]
            except BadSample as err:
                raise MmtoolError(f"query image: {err}") from None
            query = self.encoder.encode_images(pixels)  # [1, D]
        return self.search_vectors(query.numpy(), k)[0]

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """queries [Q, D] unit vectors -> per query, the k nearest records."""
        if k < 1:
            raise MmtoolError(f"-k {k}: must be at least 1")
        scores, ids = self.vectors.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.items)))
        return [[Hit(rank + 1, float(score), **self.items[i]) for rank, (score, i) in enumerate(zip(row_s, row_i))
                 if i >= 0] for row_s, row_i in zip(scores, ids)]
