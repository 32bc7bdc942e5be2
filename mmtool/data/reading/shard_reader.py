"""Finding shards (local files or webdataset URLs), counting their samples and reading them grouped by sample key."""
import glob
import json
import re
import tarfile
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import braceexpand
from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander, url_opener

from mmtool.data.reading.text_files import utf8_text
from mmtool.errors import MmtoolError

TAR_BLOCK = 512
META_FILE = "meta.json"  # beside the shards: sample counts per shard, written by building/shard_writer.py
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:")  # "https://...", "pipe:...", "file:..." (not a drive letter)


def is_url(url: str) -> bool:
    return bool(URL.match(url))


def resolve_shards(spec: str | list[str]) -> list[str]:
    """Shards from a path, a glob, brace notation ("d/train-{000000..000009}.tar") or a list of those.

    webdataset URLs ("https://h/train-{000000..000099}.tar", "pipe:aws s3 cp s3://b/train-000000.tar -",
    "file:/d/train-000000.tar") are only brace-expanded: they cannot be globbed, and a missing one counts as a
    bad shard when read.
    """
    if isinstance(spec, list):
        return [path for part in spec for path in resolve_shards(part)]
    paths = []
    for pattern in braceexpand.braceexpand(spec):
        if is_url(pattern):
            if (scheme := urlparse(pattern).scheme) not in {*gopen_schemes, "file"}:
                raise MmtoolError(f"webdataset cannot open '{scheme}:' URLs ({pattern}); stream them through a "
                                  f"command instead, e.g. 'pipe:aws s3 cp s3://bucket/shard-000000.tar -'")
            paths.append(pattern)
        elif glob.has_magic(pattern):
            paths += sorted(glob.glob(pattern))
        elif Path(pattern).is_file():
            paths.append(pattern)
        else:
            raise MmtoolError(f"shard file {pattern} (from data spec '{spec}') does not exist")
    if not paths:
        raise MmtoolError(f"no shard files match data spec '{spec}'")
    return paths


def sample_count(urls: str | list[str]) -> int:
    """Samples in the shards: from meta.json beside them (mmtool builders), img2dataset's *_stats.json,
    or else, for local files only, by listing the tar members."""
    urls = resolve_shards(urls) if isinstance(urls, str) else urls
    listed: dict[str, dict[str, int]] = {}  # meta.json location: {shard name: samples}
    total = 0
    for url in urls:
        name, meta = shard_name(url), beside(url, META_FILE)
        if meta not in listed:
            listed[meta] = counts_in_meta(read_if_there(meta), meta)
        stats_file = beside(url, name.split(".")[0] + "_stats.json")
        if name in listed[meta]:
            total += listed[meta][name]
        elif "successes" in (stats := json_object(read_if_there(stats_file), stats_file)):
            total += _checked_count(stats["successes"], stats_file, "successes", "a sample count",
                                    repr(stats["successes"])[:60])
        elif is_url(url):
            raise MmtoolError(f"cannot count the samples of {url}: there is no {META_FILE} (or img2dataset "
                              f"*_stats.json) beside it; set data.train_samples")
        else:
            total += len(member_keys(url))
    return total


def shard_name(url: str) -> str:
    """The shard's file name; in a URL the part after the last '/' up to a space ('pipe:cat /d/x.tar -')."""
    return re.match(r"\S*", url.rpartition("/")[2]).group() if is_url(url) else Path(url).name


def beside(url: str, name: str) -> str:
    """Where file `name` lies in the shard's folder (a path or a URL of the same kind)."""
    if not is_url(url):
        return str(Path(url).with_name(name))
    head, slash, tail = url.rpartition("/")
    return head + slash + tail.replace(shard_name(url), name, 1)


def read_if_there(url: str) -> bytes | None:
    try:
        with gopen(url) as stream:
            return stream.read()
    except OSError:  # missing file, or a command (curl -f, aws s3 cp, cat) that failed
        return None


def counts_in_meta(meta: bytes | None, where: str = META_FILE) -> dict[str, int]:
    """{shard name: samples} for every split listed in an mmtool meta.json (empty when there is none); a corrupt
    one is refused naming `where` and the key."""
    splits = json_object(meta, where).get("splits", {})
    if not isinstance(splits, dict):
        raise MmtoolError(f"{where}: key 'splits': expected an object of splits, got {type(splits).__name__}")
    counts = {}
    for split_name, split in splits.items():
        key = f"splits.{split_name}"
        if not isinstance(split, dict):
            raise MmtoolError(f"{where}: key '{key}': expected an object, got {str(split)[:60]}")
        names, samples = split.get("shards", []), split.get("shard_samples", [])
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise MmtoolError(f"{where}: key '{key}.shards': expected a list of shard names, got {str(names)[:60]}")
        if not isinstance(samples, list):
            raise MmtoolError(f"{where}: key '{key}.shard_samples': expected a list of sample counts, "
                              f"got {str(samples)[:60]}")
        for name, count in zip(names, samples):
            counts[name] = _checked_count(count, where, f"{key}.shard_samples", "a list of sample counts",
                                          str(samples)[:60])
    return counts


def json_object(data: bytes | None, where: str) -> dict:
    """A JSON object file's content ({} when absent), refused in one line when it is not one."""
    if data is None:
        return {}
    try:
        value = json.loads(utf8_text(data, where))
    except json.JSONDecodeError as err:
        raise MmtoolError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise MmtoolError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _checked_count(count, where: str, key: str, expected: str, shown: str) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise MmtoolError(f"{where}: key '{key}': expected {expected}, got {shown}")
    return count


def member_keys(path: str) -> set[str]:
    try:
        with tarfile.open(path) as tar:
            return {base_plus_ext(m.name)[0] for m in tar.getmembers() if m.isfile()} - {None}
    except (OSError, tarfile.TarError) as err:
        raise MmtoolError(f"cannot read shard {path}: {err}") from err


def iter_tar_groups(url: str, skipped: Counter) -> Iterator[dict]:
    """{"__key__": key, "__url__": url, field: bytes, ...} per sample, in tar order, read by webdataset.

    A shard that cannot be opened or breaks off mid-way counts once as skipped["bad_shard"]; the samples
    before the break still come through (the same ones every time, so streams stay reproducible), not the one
    being read at the break, which may lack members.
    """
    errors, reading = [], ""

    def stop(exn: Exception) -> bool:  # webdataset's handler protocol: False stops reading (this one shard)
        errors.append(exn)
        return False

    def note(name: str) -> bool:  # webdataset asks before it reads each member
        nonlocal reading
        reading = name
        return True

    for source in url_opener([{"url": url}], handler=stop):
        try:
            files = tar_file_expander([source], handler=stop, select_files=note)
            for group in group_by_keys(files, handler=stop):
                if errors and group["__key__"] == base_plus_ext(reading)[0]:
                    break  # after a break only the group being read comes, and it may lack members
                yield group
        finally:
            with suppress(OSError):  # a pipe closed before its command is done reports the broken pipe
                source["stream"].close()
    if errors or (not is_url(url) and lacks_end_marker(url)):
        skipped["bad_shard"] += 1


def lacks_end_marker(path: str) -> bool:
    """A local tar cut off mid-way: Python's tarfile reads a cut inside a member header as the archive's end, so
    the cut is found here instead: a whole tar ends in zero blocks (the end-of-archive marker)."""
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as handle:
            handle.seek(max(0, size - 2 * TAR_BLOCK))
            tail = handle.read()
    except OSError:
        return False  # unreadable: reported by the read itself
    return size % TAR_BLOCK != 0 or tail.count(0) != len(tail)
