"""Finding shard files, counting their samples and reading their tar members grouped by sample key."""
import glob
import json
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import braceexpand

from mmtool.data.shards import META_FILE
from mmtool.errors import MmtoolError

# webdataset's key rule: the key runs to the first dot of the file name, the rest is the field.
MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def resolve_shards(spec: str | list[str]) -> list[str]:
    """Shard paths from a path, a glob, brace notation ("d/train-{000000..000009}.tar") or a list of those."""
    if isinstance(spec, list):
        return [path for part in spec for path in resolve_shards(part)]
    paths = []
    for pattern in braceexpand.braceexpand(spec):
        if glob.has_magic(pattern):
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
    or else by listing the tar members."""
    urls = resolve_shards(urls) if isinstance(urls, str) else urls
    listed: dict[Path, dict] = {}
    total = 0
    for url in urls:
        path = Path(url)
        if path.parent not in listed:
            listed[path.parent] = counts_in_meta(path.parent / META_FILE)
        stats = path.with_name(path.name.split(".")[0] + "_stats.json")
        if path.name in listed[path.parent]:
            total += listed[path.parent][path.name]
        elif stats.is_file() and "successes" in (written := json.loads(stats.read_text())):
            total += written["successes"]
        else:
            total += len({match.group(1) for name in member_names(path) if (match := MEMBER_NAME.match(name))})
    return total


def counts_in_meta(meta_path: Path) -> dict[str, int]:
    """{shard name: samples} for every split listed in an mmtool meta.json (empty when there is none)."""
    if not meta_path.is_file():
        return {}
    splits = json.loads(meta_path.read_text()).get("splits", {})
    return {name: count for split in splits.values()
            for name, count in zip(split.get("shards", []), split.get("shard_samples", []))}


def member_names(path: Path) -> list[str]:
    try:
        with tarfile.open(path) as tar:
            return [m.name for m in tar.getmembers() if m.isfile()]
    except (OSError, tarfile.TarError) as err:
        raise MmtoolError(f"cannot read shard {path}: {err}") from err


def iter_tar_groups(url: str, skipped: Counter) -> Iterator[dict]:
    """{"__key__": key, field: bytes, ...} per sample, in tar order.

    A shard that cannot be opened or breaks off mid-way counts once as skipped["bad_shard"]; the samples
    before the break still come through (the same ones every time, so streams stay reproducible).
    """
    group: dict = {}
    try:
        with tarfile.open(url, mode="r|*") as tar:
            for member in tar:
                match = MEMBER_NAME.match(member.name)
                if not member.isfile() or not match or member.name.startswith("__"):
                    continue
                key, field = match.group(1), match.group(2).lower()
                if group and group["__key__"] != key:
                    yield group
                    group = {}
                group["__key__"] = key
                group[field] = tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError):
        skipped["bad_shard"] += 1
        return
    if group:
        yield group
