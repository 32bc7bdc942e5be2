"""What `mmtool index build|add` reads: a folder of images, a JSONL list, or webdataset shards, as SourceItems
(bytes still encoded; decoding happens at embedding time, where unreadable files are reported and skipped)."""
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mmtool.data.building.jsonl import read_record
from mmtool.data.reading.sample_format import IMAGE_EXTENSIONS
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.data.reading.shard_reader import resolve_shards
from mmtool.data.reading.text_files import bad_utf8_reason
from mmtool.errors import MmtoolError


@dataclass
class SourceItem:
    path: str  # a file path, or SHARD#KEY for a sample inside a webdataset shard
    image: bytes | None  # None: the file could not be read (reported as unreadable)
    caption: str | None = None
    fields: dict = field(default_factory=dict)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def folder_items(folder: Path) -> Iterator[SourceItem]:
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS):
        yield SourceItem(str(path), _read(path))


def jsonl_items(file: Path, skipped: Counter) -> Iterator[SourceItem]:
    """Lines as for `mmtool data from-jsonl`: {"image": path relative to the file, "caption"?: text, ...}. A
    malformed line is reported on stderr as file:line: reason and counted in `skipped` as a bad line."""
    with file.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            where = f"{file}:{number}"
            try:
                if reason := bad_utf8_reason(raw):
                    raise MmtoolError(f"{where}: {reason}")
                record = read_record(raw.decode("utf-8"), where)
            except MmtoolError as err:
                print(err, file=sys.stderr)
                skipped["bad_line"] += 1
                continue
            path = file.parent / record["image"]
            caption = record.get("caption") or next(iter(record.get("captions") or []), None)
            fields = {k: v for k, v in record.items() if k not in ("image", "caption", "captions")}
            yield SourceItem(str(path), _read(path), caption, fields)


def shard_items(spec: str, skipped: Counter) -> Iterator[SourceItem]:
    """Samples the shards cannot offer (no image, empty caption, bad JSON, a broken shard) are counted in
    `skipped` by reason."""
    for raw in parsed_samples(resolve_shards(spec), skipped):
        yield SourceItem(f"{raw.url}#{raw.key}", raw.image, raw.captions[0] if raw.captions else None,
                         {"key": raw.key, **raw.meta})


def source_items(source: str, skipped: Counter) -> Iterator[SourceItem]:
    """`skipped` counts, by reason, the samples of shards and the JSONL lines that never become an item."""
    path = Path(source)
    if path.is_dir():
        return folder_items(path)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise MmtoolError(f"SOURCE {source}: JSONL file not found")
        return jsonl_items(path, skipped)
    if ".tar" in source or "*" in source or "{" in source:
        return shard_items(source, skipped)
    raise MmtoolError(f"SOURCE {source}: expected a folder of images, a .jsonl list or webdataset shards (.tar)")
