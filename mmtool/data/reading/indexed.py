"""A small training set held in memory, and batches composed from groups of similar samples (hard negatives).

The streaming loader (loader.py) cannot put chosen samples together; for data that fits in memory (the emoji
corpora: a few thousand samples) this module can. Exact duplicate images are merged into one sample carrying all
their captions, and a batch's captions are picked so that no caption in it is also a phrasing of another sample
of the batch, so composing batches from similar samples never turns a true match into a negative.

Reproducibility contract (as in loader.py): an epoch's plan is a list of global micro-batches (lists of sample
indices); rank r's batch b is plan[b * world_size + r], so every rank has the same number of batches, ranks get
different samples, and resuming after b batches with the same plan yields the same batches.
"""
import hashlib
from collections import Counter, defaultdict

import numpy as np
from torch.utils.data import get_worker_info

from mmtool.data.reading.loader import ShardBatches, TrainLoader, worker_plan
from mmtool.data.reading.sample_format import RawSample
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.data.reading.shard_reader import sample_count
from mmtool.errors import MmtoolError


class IndexedSet:
    """Every usable sample of the shards, in shard order, duplicates merged; images stay encoded."""

    def __init__(self, urls: list[str], max_samples: int, purpose: str):
        declared = sample_count(urls)
        if declared > max_samples:
            raise MmtoolError(f"{purpose} holds the training set in memory: {declared} samples in {urls[0]}... "
                              f"exceed data.max_indexed_samples={max_samples} (raise it if they fit, or use "
                              f"data.batch_composition=random and loss.mined_negatives=0)")
        self.skipped = Counter()
        self.samples: list[RawSample] = []
        self.index_of: dict[str, int] = {}  # sample key -> index (merged duplicates share one)
        by_image: dict[bytes, int] = {}
        for raw in parsed_samples(urls, self.skipped):
            digest = hashlib.sha256(raw.image).digest()
            if digest in by_image:
                kept = self.samples[by_image[digest]]
                kept.captions.extend(c for c in raw.captions if c not in kept.captions)
            else:
                by_image[digest] = len(self.samples)
                self.samples.append(RawSample(raw.key, raw.url, raw.image, list(raw.captions), raw.meta))
            self.index_of[raw.key] = by_image[digest]
        if not self.samples:
            raise MmtoolError(f"no usable sample in {len(urls)} shard(s) starting {urls[0]}")
        owners = defaultdict(set)  # caption -> samples that have it among their phrasings
        for index, sample in enumerate(self.samples):
            for caption in sample.captions:
                owners[caption].add(index)
        self.owners = owners

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self, field: str) -> list[str]:
        """Each sample's label `field` as a string; a missing one is an error naming the sample."""
        missing = next((s for s in self.samples if not isinstance(s.meta.get(field), (str, int))), None)
        if missing is not None:
            raise MmtoolError(f"data.batch_label {field!r}: sample {missing.key} in {missing.url} has no such "
                              f"string field")
        return [str(s.meta[field]) for s in self.samples]

    def conflicts(self, index: int) -> set[int]:
        """Samples that share a caption with `index` (itself included): never a negative for it."""
        return set().union(*(self.owners[c] for c in self.samples[index].captions))

    def batch_captions(self, members: list[int]) -> list[list[str]]:
        """Per member, its captions that are no phrasing of another member (all of them when none is left)."""
        counts = Counter(c for m in set(members) for c in set(self.samples[m].captions))
        own = [[c for c in self.samples[m].captions if counts[c] == 1] for m in members]
        return [kept or self.samples[m].captions for m, kept in zip(members, own)]


def group_indices(keys: list) -> list[list[int]]:
    """Sample indices grouped by key (label or cluster id), groups in order of first appearance."""
    groups = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    return list(groups.values())


def compose_batches(groups: list[list[int]], batch_size: int, count: int, rng: np.random.Generator) -> list[list[int]]:
    """`count` batches, each filled from one group where the group is large enough.

    Groups are shuffled and laid end to end (each shuffled inside), the sequence is cut into batches, so a group
    smaller than a batch shares it with the next group(s); the batches are then shuffled and `count` kept.
    """
    sequence = [int(i) for g in rng.permutation(len(groups)) for i in rng.permutation(groups[g])]
    batches = [sequence[s:s + batch_size] for s in range(0, len(sequence) - batch_size + 1, batch_size)]
    if count > len(batches):
        raise MmtoolError(f"{count} batches of {batch_size} asked from {len(sequence)} samples")
    return [batches[i] for i in rng.permutation(len(batches))[:count]]


class IndexedBatches(ShardBatches):
    """One rank's batches of an epoch, read from a plan over an IndexedSet (decoding as the streaming loader)."""

    def __init__(self, indexed: IndexedSet, plan: list[list[int]], **kwargs):
        super().__init__([indexed.samples[0].url], resampled=False, shuffle_buffer=0, **kwargs)
        self.indexed, self.plan = indexed, plan

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info else 0
        _, _, count = worker_plan(self.batches_per_epoch, self.skip_batches, worker, self.workers)
        skipped = Counter()
        for i in range(count):
            batch_index = self.skip_batches + worker + i * self.workers
            members = self.plan[batch_index * self.world_size + self.rank]
            raws = [RawSample(s.key, s.url, s.image, captions, s.meta) for s, captions in
                    zip((self.indexed.samples[m] for m in members), self.indexed.batch_captions(members))]
            yield self.assemble(raws, batch_index, skipped)


def make_indexed_loader(indexed: IndexedSet, plan: list[list[int]], *, batch_size: int, image_size: int,
                        epoch: int, seed: int, rank: int, world_size: int, workers: int, skip_batches: int,
                        augment) -> TrainLoader:
    """Like make_train_loader, with the batches of `plan` (len(plan) // world_size per rank)."""
    batches = len(plan) // world_size
    dataset = IndexedBatches(indexed, plan, batch_size=batch_size, image_size=image_size, epoch=epoch, seed=seed,
                             rank=rank, world_size=world_size, workers=workers, batches_per_epoch=batches,
                             skip_batches=skip_batches, augment=augment)
    return TrainLoader(dataset, workers, max(batches - skip_batches, 0))
