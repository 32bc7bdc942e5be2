"""ImageIndex: a folder holding a FAISS index of unit image embeddings (inner product = cosine), one metadata
record per vector, thumbnails, and the identity of the model that made the vectors.

    index/index.json             format, model identity (hash of its weights) and path, sizes, style views (the
                                 model's eval.style_views when built), index type, count, and `data`: the version
                                 folder holding the vectors and records
    index/vNNNNNN/vectors.faiss  IndexFlatIP (exact) or IndexHNSWFlat (approximate, for large collections)
    index/vNNNNNN/items.jsonl    {"path", "caption", "fields", "sha256"} per vector, in vector order
    index/thumbs/                SHA256.jpg thumbnails for the web page
    index/.lock                  held by the one process writing (build, add)

A save writes a new version folder, then renames index.json over the old one: that rename is the commit, so a
crash at any point leaves either the previous complete version or the new one. Older versions are removed after.
"""
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from mmtool.checkpoint import atomic_write
from mmtool.data.reading.images import BadSample
from mmtool.errors import MmtoolError
from mmtool.index.embed import EmbedReport, embedded_batches, image_bytes_to_pixels
from mmtool.index.embedding_models import load_encoder
from mmtool.index.sources import source_items
from mmtool.index.writer_lock import exclusive_writer
from stage1_clip.style_views import mean_view_embedding

FORMAT = "mmtool.image_index/2"
FLAT_FORMAT = "mmtool.image_index/1"  # older: vectors and records beside index.json, replaced one by one
VERSION_FOLDER = re.compile(r"v\d{6}")
SAVE_EVERY = 1000  # images between saves while embedding: a crash loses at most this many
OPEN_ATTEMPTS = 5  # a reader racing a writer that commits and removes versions reads the manifest again
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
              progress: bool = True, save_every: int = SAVE_EVERY) -> tuple["ImageIndex", EmbedReport]:
        out = Path(out)
        if (out / "index.json").exists():
            raise MmtoolError(f"--out {out}: already holds an index; use `mmtool index add` or another folder")
        new_faiss_index(index_type, 1)  # bad --index-type fails before any embedding
        encoder = load_encoder(model)
        meta = {"format": FORMAT, "model": {"identity": encoder.identity, "path": str(Path(model).resolve())},
                "image_size": encoder.image_size, "style_views": encoder.style_views, "index_type": index_type,
                "embed_dim": None, "count": 0}
        index = cls(out, meta, None, [], encoder)
        with exclusive_writer(out):
            if (out / "index.json").exists():
                raise MmtoolError(f"--out {out}: another build wrote an index here meanwhile")
            remove_stale_temporaries(out)
            report = index._append(source, batch_size, progress, save_every)
        if not index.items:
            raise MmtoolError(f"SOURCE {source}: no readable image "
                              f"(unreadable: {len(report.unreadable)}, duplicates: {report.duplicates})")
        return index, report

    def add(self, source: str, model: str | Path | None = None, batch_size: int = 64, progress: bool = True,
            save_every: int = SAVE_EVERY) -> EmbedReport:
        """Embeds only the new images; duplicates of indexed content are skipped. `model` must be the same
        weights the index was built with (any format). Saves every `save_every` new images, so a rerun after a
        crash continues where the last save left off."""
        if model is not None:
            self._encoder = self._checked(load_encoder(model), model)
        with exclusive_writer(self.folder):
            self._reload_if_changed()
            remove_stale_temporaries(self.folder)
            return self._append(source, batch_size, progress, save_every)

    def _reload_if_changed(self) -> None:
        """Another writer may have saved between our open() and taking the lock."""
        if self.meta.get("data") is not None and self.meta != _read_meta(self.folder):
            latest = ImageIndex.open(self.folder)
            self.meta, self.vectors, self.items = latest.meta, latest.vectors, latest.items

    def _append(self, source: str, batch_size: int, progress: bool, save_every: int) -> EmbedReport:
        if save_every < 1:
            raise MmtoolError(f"--save-every {save_every}: must be at least 1")
        known = {item["sha256"] for item in self.items}
        report, unsaved = EmbedReport(), 0
        batches = embedded_batches(source_items(source, report.unusable), self.encoder, self.style_views,
                                   self.folder / "thumbs", known, report, batch_size, progress)
        for vectors, records in batches:  # vectors [B, D]
            if self.vectors is None:
                self.meta["embed_dim"] = int(vectors.shape[1])
                self.vectors = new_faiss_index(self.meta["index_type"], vectors.shape[1])
            self.vectors.add(np.ascontiguousarray(vectors))
            self.items.extend(records)
            unsaved += len(records)
            if unsaved >= save_every:
                self.save()
                unsaved = 0
        if unsaved:
            self.save()
        return report

    def save(self) -> None:
        """Writes the next version folder, then commits it by renaming index.json over the old one."""
        version = f"v{_version_number(self.meta.get('data')) + 1:06d}"
        data = self.folder / version
        if data.exists():  # left by a crash before its commit
            shutil.rmtree(data)
        data.mkdir(parents=True)
        faiss.write_index(self.vectors, str(data / "vectors.faiss"))
        lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in self.items)
        (data / "items.jsonl").write_text(lines, encoding="utf-8")
        for name in ("vectors.faiss", "items.jsonl"):
            _fsync(data / name)
        meta = {**self.meta, "format": FORMAT, "count": len(self.items), "data": version}
        atomic_write(self.folder / "index.json", lambda tmp: _write_synced(tmp, json.dumps(meta, indent=2) + "\n"))
        self.meta = meta
        self._remove_other_versions(version)

    def _remove_other_versions(self, current: str) -> None:
        for path in self.folder.iterdir():
            if path.is_dir() and VERSION_FOLDER.fullmatch(path.name) and path.name != current:
                shutil.rmtree(path, ignore_errors=True)
        for name in ("vectors.faiss", "items.jsonl"):  # a flat-format index converted by this save
            (self.folder / name).unlink(missing_ok=True)

    # opening and searching ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, model: str | Path | None = None) -> "ImageIndex":
        """`model` (checkpoint or export folder) embeds the queries; by default the one the index was built with."""
        folder = Path(folder)
        for attempt in range(OPEN_ATTEMPTS):
            meta = _read_meta(folder)
            data = folder / meta["data"] if meta["format"] == FORMAT else folder
            try:
                vectors = faiss.read_index(str(data / "vectors.faiss"))
                text = (data / "items.jsonl").read_text(encoding="utf-8")
                break
            except (RuntimeError, OSError):
                if attempt == OPEN_ATTEMPTS - 1 or _read_meta(folder) == meta:  # no commit in between: broken
                    raise MmtoolError(f"{data}: vectors or records missing or unreadable") from None
        items = [json.loads(line) for line in text.splitlines()]
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

    @property
    def style_views(self) -> list[str]:
        """The views every vector was embedded in, fixed when the index was built (older indexes: the plain crop)."""
        return self.meta.get("style_views", [])

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
                pixels = image_bytes_to_pixels(image, self.meta["image_size"], self.style_views)  # [1, V, 3, S, S]
            except BadSample as err:
                raise MmtoolError(f"query image: {err}") from None
            query = mean_view_embedding(self.encoder.encode_images, pixels)  # [1, D]
        return self.search_vectors(query.numpy(), k)[0]

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """queries [Q, D] unit vectors -> per query, the k nearest records."""
        if k < 1:
            raise MmtoolError(f"-k {k}: must be at least 1")
        scores, ids = self.vectors.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.items)))
        return [[Hit(rank + 1, float(score), **self.items[i]) for rank, (score, i) in enumerate(zip(row_s, row_i))
                 if i >= 0] for row_s, row_i in zip(scores, ids)]


def remove_stale_temporaries(folder: Path) -> None:
    """What a killed writer left: temporary files of atomic writes (index.json, thumbnails). Called by the one
    writer holding the lock; uncommitted version folders go at its first save."""
    for parent in (folder, folder / "thumbs"):
        if parent.is_dir():
            for stale in parent.glob(".*.tmp"):
                stale.unlink(missing_ok=True)


def _read_meta(folder: Path) -> dict:
    path = folder / "index.json"
    if not path.is_file():
        raise MmtoolError(f"{folder}: not an mmtool image index (no index.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MmtoolError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, FLAT_FORMAT):
        raise MmtoolError(f"{path}: unknown index format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if meta["format"] == FORMAT and not VERSION_FOLDER.fullmatch(str(meta.get("data"))):
        raise MmtoolError(f"{path}: key 'data': {meta.get('data')!r} is not a version folder name")
    return meta


def _version_number(name: str | None) -> int:
    return int(name[1:]) if name else 0


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
