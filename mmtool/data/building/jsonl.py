"""Your own image-caption pairs, listed in a JSONL file, as train/val shards.

Each line: {"image": path (relative to the JSONL's folder), "caption": text (or "captions": [texts]),
"split"?: name, "label"?: ..., any other fields}. The extra fields become label fields of the sample's json.
"""
import io
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from mmtool.data.building.shard_writer import SplitWriter, hash_split, write_meta
from mmtool.data.reading.images import BadSample, open_image
from mmtool.data.reading.sample_format import IMAGE_EXTENSIONS, encode_sample
from mmtool.data.reading.text_files import bad_utf8_reason
from mmtool.errors import MmtoolError
from mmtool.progress import progress

RESERVED_FIELDS = ("image", "caption", "captions", "split")


def line_captions(record: dict, where: str) -> list[str]:
    listed = record.get("captions", [record.get("caption")])
    if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
        raise MmtoolError(f"{where}: \"caption\" must be a string (or \"captions\" a list of strings)")
    captions = [c.strip() for c in listed if c.strip()]
    if not captions:
        raise MmtoolError(f"{where}: empty caption")
    return captions


def read_record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError as err:
        raise MmtoolError(f"{where}: invalid JSON ({err})") from err
    if not isinstance(record, dict):
        raise MmtoolError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("image"), str) or not record["image"]:
        raise MmtoolError(f"{where}: missing \"image\" (a path relative to the JSONL file)")
    if "split" in record and not (isinstance(record["split"], str) and re.fullmatch(r"[A-Za-z0-9_]+", record["split"])):
        raise MmtoolError(f"{where}: \"split\" must be a plain name such as train or val, got {record['split']!r}")
    return record


def _usable_line(raw: bytes, where: str) -> tuple[dict, list[str]]:
    if reason := bad_utf8_reason(raw):
        raise MmtoolError(f"{where}: {reason}")
    record = read_record(raw.decode("utf-8"), where)
    return record, line_captions(record, where)


def stored_image(data: bytes, suffix: str, image_size: int | None) -> tuple[bytes, str]:
    """(bytes, extension): the original file when it is a shard image type and small enough, else a PNG
    whose shorter side is image_size. Raises BadSample for files that do not decode."""
    image = open_image(data)
    if image_size and min(image.size) > image_size:
        scale = image_size / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.LANCZOS)
    elif suffix in IMAGE_EXTENSIONS:
        return data, suffix
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue(), "png"


def build_from_jsonl(file: Path, out: Path, image_size: int | None = None, val_fraction: float = 0.0,
                     seed: int = 0, shard_size: int = 1000) -> dict:
    """Writes out/{split}-%06d.tar and out/meta.json; returns counts, skips by reason and timing.

    A malformed line is reported on stderr as file:line: reason and counted as a bad line; missing or undecodable
    images are skipped and counted. Fails only when no line gave a usable pair.
    Lines without "split" go to val by a hash of their image path with probability val_fraction.
    `image_size` downscales larger images (shorter side); smaller ones are stored as they are.
    """
    file = Path(file)
    if not file.is_file():
        raise MmtoolError(f"JSONL file {file} does not exist")
    start = time.perf_counter()
    skipped = Counter()
    with SplitWriter(out, shard_size) as shards, file.open("rb") as lines:
        for number, raw in enumerate(progress(lines, desc=file.name, unit="line"), start=1):
            if not raw.strip():
                continue
            try:
                record, captions = _usable_line(raw, f"{file}:{number}")
            except MmtoolError as err:  # reported, counted, and the next line read
                print(err, file=sys.stderr)
                skipped["bad_line"] += 1
                continue
            path = file.parent / record["image"]
            try:
                image, ext = stored_image(path.read_bytes(), path.suffix.lower().lstrip("."), image_size)
            except OSError:
                skipped["missing_image"] += 1
                continue
            except BadSample as err:
                skipped[err.reason] += 1
                continue
            labels = {k: v for k, v in record.items() if k not in RESERVED_FIELDS}
            key = f"{number:08d}_" + re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:60]
            split = record.get("split") or hash_split(record["image"], val_fraction, seed)
            shards.write(split, encode_sample(key, image, captions, {"image_path": record["image"], **labels}, ext))
        written = shards.close()
    if not written:
        raise MmtoolError(f"{file}: no usable image-caption pair (skipped: {dict(skipped) or 'no lines'})")
    write_meta(out, file.stem, written, val_fraction=val_fraction, seed=seed, skipped=dict(skipped),
               source=str(file.resolve()))
    return {"out": str(out), "samples": {split: info["samples"] for split, info in written.items()},
            "skipped": dict(skipped), "seconds": round(time.perf_counter() - start, 1)}
