"""The endless, reproducible stream of raw samples one (rank, worker) slot reads during an epoch.

Slot s of S = world_size x workers reads, in pass p, share (s + p) % S of the epoch's data: every S-th shard of
a seeded shard permutation, or, with fewer than SHARDS_PER_SLOT x S shards, every S-th sample of all shards.
Rotating the share keeps a slot busy (and all ranks' batch counts equal) when its own share runs out. Each pass
goes through a seeded shuffle buffer that drains at the pass's end, so no sample repeats within a pass.
"""
import hashlib
import itertools
import math
from collections import Counter
from typing import Iterable, Iterator

import numpy as np

from mmtool.data.reading.images import BadSample
from mmtool.data.reading.sample_format import RawSample, parse_raw
from mmtool.data.reading.shard_reader import iter_tar_groups
from mmtool.errors import MmtoolError

# With fewer shards per slot, whole-shard shares would differ too much in size (a 307-sample tail shard
# against 1000-sample ones), so every slot reads all shards and keeps every S-th sample instead.
SHARDS_PER_SLOT = 4


def seeded_rng(*parts: int | str) -> np.random.Generator:
    """A numpy Generator determined by its parts, e.g. (seed, epoch, "shuffle", slot); strings are hashed."""
    entropy = [part % 2**64 if isinstance(part, int)
               else int.from_bytes(hashlib.sha256(part.encode("utf-8")).digest()[:8], "big") for part in parts]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def parsed_samples(urls: Iterable[str], skipped: Counter) -> Iterator[RawSample]:
    """Usable raw samples of the shards in order; the others are counted in `skipped` by reason."""
    for url in urls:
        for members in iter_tar_groups(url, skipped):
            try:
                yield parse_raw(members, url)
            except BadSample as err:
                skipped[err.reason] += 1


def shuffled(items: Iterable, buffer_size: int, rng: np.random.Generator) -> Iterator:
    """webdataset-style buffer shuffle that drains (in random order) when `items` ends."""
    if buffer_size <= 1:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = int(rng.integers(buffer_size))
        yield buffer[index]
        buffer[index] = item
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


def slot_samples(urls: list[str], *, seed: int, epoch: int, slot: int, slots: int, resampled: bool,
                 shuffle_buffer: int, skipped: Counter) -> Iterator[RawSample]:
    """Endless stream of usable raw samples for `slot` of `slots`; unusable ones are counted in `skipped`.

    With `resampled`, each pass draws its shards with replacement (as many as a slot's share holds).
    Raises MmtoolError after `slots` passes in a row without a usable sample (every share has then been tried).
    """
    shard_order = [urls[i] for i in seeded_rng(seed, epoch, "shards").permutation(len(urls))]
    draw_rng = seeded_rng(seed, epoch, "resample", slot)
    shuffle_rng = seeded_rng(seed, epoch, "shuffle", slot)
    empty_passes = 0
    for pass_index in itertools.count():
        share = (slot + pass_index) % slots
        if resampled:
            draws = draw_rng.integers(len(urls), size=math.ceil(len(urls) / slots))
            samples = parsed_samples([urls[i] for i in draws], skipped)
        elif len(urls) >= SHARDS_PER_SLOT * slots:
            samples = parsed_samples(shard_order[share::slots], skipped)
        else:
            samples = (s for i, s in enumerate(parsed_samples(shard_order, skipped)) if i % slots == share)
        produced = 0
        for sample in shuffled(samples, shuffle_buffer, shuffle_rng):
            produced += 1
            yield sample
        empty_passes = 0 if produced else empty_passes + 1
        if empty_passes >= slots:
            raise MmtoolError(f"no usable sample in {slots} passes over {len(urls)} shard(s) starting {urls[0]} "
                              f"(skipped so far: {dict(skipped) or 'none'}; fewer samples than ranks x workers?)")
