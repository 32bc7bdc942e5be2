"""Writing webdataset shards: `{split}-%06d.tar` files plus a meta.json that readers count samples from."""
import hashlib
import json
from pathlib import Path

import webdataset as wds

from mmtool.data.reading.shard_reader import META_FILE

SHARD_GLOB = "*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"  # what SplitWriter names its shards


def hash_split(group: str, val_fraction: float, seed: int) -> str:
    """'val' or 'train' from a hash of the group name: stable across runs, machines and subsets."""
    digest = hashlib.sha256(f"{seed}:{group}".encode("utf-8")).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


class SplitWriter:
    """Streams encoded samples (see sample_format.encode_sample) into out/{split}-000000.tar, ... per split.

    Shards of an earlier build in `out` are deleted first, so a smaller rebuild leaves nothing stale for a
    glob to pick up; used as a context manager, a build that raises deletes its partial shards too.
    `close()` returns {split: {"shards": [names], "shard_samples": [counts], "samples": n}}.
    """

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        out.mkdir(parents=True, exist_ok=True)
        self.delete_shards()
        self.writers: dict[str, wds.ShardWriter] = {}
        self.written: dict[str, list[tuple[str, int]]] = {}

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close()
        if exc_type is not None:
            self.delete_shards()

    def delete_shards(self) -> None:
        for old in [*self.out.glob(SHARD_GLOB), self.out / META_FILE]:
            old.unlink(missing_ok=True)

    def write(self, split: str, sample: dict) -> None:
        if split not in self.writers:
            self.writers[split] = self.open(split)
        self.writers[split].write(sample)

    def open(self, split: str) -> wds.ShardWriter:
        written = self.written.setdefault(split, [])

        def record(fname: str) -> None:  # called as each shard closes, while writer.count is still its size
            written.append((Path(fname).name, writer.count))

        # verbose=0 silences the "# writing" lines; mtime=0 makes the tar bytes reproducible.
        writer = wds.ShardWriter(str(self.out / f"{split}-%06d.tar"), maxcount=self.shard_size, verbose=0,
                                 post=record, encoder=False, mtime=0)
        return writer

    def close(self) -> dict:
        """Closes every split's last shard (again is harmless) and returns what was written."""
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
        return {split: {"shards": [name for name, _ in shards], "shard_samples": [n for _, n in shards],
                        "samples": sum(n for _, n in shards)} for split, shards in sorted(self.written.items())}


def write_meta(out: Path, dataset: str, splits: dict, **info) -> dict:
    """out/meta.json: {"dataset", "splits": SplitWriter.close()'s result, **info}; returns it."""
    meta = {"dataset": dataset, "splits": splits, **info}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta
