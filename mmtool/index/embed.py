"""Source items -> unit vectors + metadata records, in batches, with thumbnails; unreadable images and exact
duplicates (same file bytes) are counted and skipped, never fatal. An image is embedded in the index's style views
(stage1_clip/style_views.py; none: the plain crop), as eval-clip scores it; a query image the same way."""
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mmtool.checkpoint import atomic_write
from mmtool.data.reading.images import BadSample, eval_crop, load_image
from mmtool.index.sources import SourceItem
from stage1_clip.style_views import mean_view_embedding, view_stack

THUMB_SIZE = 160


@dataclass
class EmbedReport:
    added: int = 0
    duplicates: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unusable: Counter = field(default_factory=Counter)  # shard samples that never became an item, by reason

    def as_dict(self) -> dict:
        return {"added": self.added, "duplicates": self.duplicates, "unreadable": len(self.unreadable),
                "unreadable_paths": [f"{path} ({reason})" for path, reason in self.unreadable]}

    def skipped(self) -> Counter:
        """Every sample not added, by reason."""
        return self.unusable + Counter(reason for _, reason in self.unreadable) + Counter(duplicate=self.duplicates)


def thumbnail_name(sha256: str) -> str:
    return f"{sha256}.jpg"


def _save_thumbnail(image: Image.Image, path: Path) -> None:
    if path.exists():
        return
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.BICUBIC)
    atomic_write(path, lambda tmp: thumb.save(tmp, "JPEG", quality=88))


def encode_batch(encoder, pixels: list[torch.Tensor]) -> np.ndarray:
    """[V, 3, S, S] views each -> [B, D] float32 unit vectors."""
    return mean_view_embedding(encoder.encode_images, torch.stack(pixels)).numpy().astype(np.float32)


def embedded_batches(items: Iterable[SourceItem], encoder, views: list[str], thumbs: Path, known: set[str],
                     report: EmbedReport, batch_size: int = 64,
                     progress: bool = True) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """Yields (vectors [B, D] float32, one record per vector) batch by batch, counting what it skips in `report`;
    `known` holds content hashes already in the index and grows with the new ones."""
    pixels: list[torch.Tensor] = []
    records: list[dict] = []
    thumbs.mkdir(parents=True, exist_ok=True)
    for item in tqdm(items, desc="embed", unit="img", disable=not progress, dynamic_ncols=True):
        if item.image is None:
            report.unreadable.append((item.path, "missing_or_unreadable_file"))
            continue
        sha256 = hashlib.sha256(item.image).hexdigest()
        if sha256 in known:
            report.duplicates += 1
            continue
        try:
            image = load_image(item.image)
        except BadSample as err:
            report.unreadable.append((item.path, err.reason))
            continue
        known.add(sha256)
        pixels.append(view_stack(eval_crop(image, encoder.image_size), views))  # [V, 3, S, S]
        _save_thumbnail(image, thumbs / thumbnail_name(sha256))
        records.append({"path": item.path, "caption": item.caption, "fields": item.fields, "sha256": sha256})
        if len(pixels) == batch_size:
            yield _finished(encoder, pixels, records, report)
            pixels, records = [], []
    if pixels:
        yield _finished(encoder, pixels, records, report)


def _finished(encoder, pixels: list[torch.Tensor], records: list[dict],
              report: EmbedReport) -> tuple[np.ndarray, list[dict]]:
    vectors = encode_batch(encoder, pixels)  # [B, D]
    report.added += len(records)
    return vectors, records


def image_bytes_to_pixels(data: bytes, image_size: int, views: list[str]) -> torch.Tensor:
    """A query image as the index's images were embedded: [1, V, 3, S, S]."""
    return view_stack(eval_crop(load_image(data), image_size), views)[None]
