"""Streaming training batches and the in-memory eval set, both read from webdataset shards.

Reproducibility contract of make_train_loader: the batches depend only on (seed, epoch, rank, world_size,
workers) and the shards. Batch b of a rank is built in a worker from stream b % workers, out of a fixed run of
batch_size raw samples, so resuming after k batches skips k batches' worth of raw samples without decoding
them. An unreadable image is skipped, counted, and its place taken by a copy of a good sample of the same batch
(or, when none is good, of a stand-in chosen by batch index): batches keep their size (ranks all-gather equal
shapes) and their raw positions.

With `views` set (stage 1's image-trunk cache), each sample's image is one of `views` fixed augmented views, view v
drawn from a generator seeded by (seed, v, key) and picked per epoch by (seed, epoch, key): each epoch's image is
distributed as without views, but repeats across epochs, so a frozen trunk's output on it can be reused
(mmtool/data/reading/views.py). With `view_cache` (that cache's folder) too, a view whose entry is there is not
decoded at all: its pixels are left zero and its ViewRef carries the encoded image, in case the entry cannot be read.

With `origin` set to another layout than (world_size, workers, batch_size), the epoch began on that layout (a run
resumed on another number of ranks): each worker then reads every origin stream and takes its samples of the
epoch's global order (mmtool/data/reading/relayout.py), so no sample of the epoch is read twice or left out. It
costs each worker a pass over all origin streams (and their shuffle buffers) for the rest of that epoch only;
unreadable members met in those streams are not counted (decode failures still are).
"""
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmtool.data.reading.augment import pick_caption
from mmtool.data.reading.images import (AugmentConfig, BadSample, eval_crop, load_image, open_image,
                                        to_normalized_tensor, train_pixels)
from mmtool.data.reading.relayout import Layout, origin_positions
from mmtool.data.reading.sample_format import RawSample
from mmtool.data.reading.sample_stream import parsed_samples, seeded_rng, slot_samples
from mmtool.data.reading.shard_reader import resolve_shards, sample_count  # noqa: F401 (this module's API too)
from mmtool.data.reading.views import ViewRef, ViewRenderer
from mmtool.data.reading.worker_lifetime import worker_guard
from mmtool.errors import MmtoolError
from mmtool.feature_cache import entry_path
from mmtool.progress import progress


def worker_plan(batches: int, skip: int, worker: int, workers: int) -> tuple[int, int, int]:
    """(stream, skip_in_stream, count) for DataLoader worker `worker` of a run resumed after `skip` batches.

    A fresh run's stream w makes batches w, w + workers, ...; the DataLoader asks its workers round-robin from
    worker 0, so after a resume worker j must play stream (skip + j) % workers.
    """
    stream = (skip + worker) % workers
    return stream, len(range(stream, skip, workers)), len(range(skip + worker, batches, workers))


def train_layout(world_size: int, workers: int, batch_size: int) -> Layout:
    """How make_train_loader deals an epoch with these settings (workers=0 reads like one worker)."""
    return Layout(world_size, max(workers, 1), batch_size)


class ShardBatches(IterableDataset):
    """One rank's batches for one epoch; each DataLoader worker yields its round-robin share."""

    def __init__(self, urls: list[str], *, batch_size: int, image_size: int, epoch: int, seed: int, rank: int,
                 world_size: int, workers: int, batches_per_epoch: int, skip_batches: int, shuffle_buffer: int,
                 augment: AugmentConfig, resampled: bool, views: int = 0, view_cache: Path | None = None,
                 origin: Layout | None = None):
        super().__init__()
        self.views, self.view_cache = views, view_cache
        self.renderer = ViewRenderer(seed, image_size, augment)
        self.urls, self.batch_size, self.image_size, self.augment = urls, batch_size, image_size, augment
        self.epoch, self.seed, self.rank, self.world_size = epoch, seed, rank, world_size
        self.workers = max(workers, 1)  # workers=0 (main process) reads the same stream as workers=1
        self.batches_per_epoch, self.skip_batches = batches_per_epoch, skip_batches
        self.shuffle_buffer, self.resampled = shuffle_buffer, resampled
        self.layout = train_layout(world_size, workers, batch_size)
        self.origin = origin or self.layout

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info else 0
        if self.origin != self.layout:
            yield from self.relaid(worker)
            return
        stream, skip_in_stream, count = worker_plan(self.batches_per_epoch, self.skip_batches, worker, self.workers)
        skipped = Counter()
        samples = slot_samples(self.urls, seed=self.seed, epoch=self.epoch,
                               slot=self.rank * self.workers + stream, slots=self.world_size * self.workers,
                               resampled=self.resampled, shuffle_buffer=self.shuffle_buffer, skipped=skipped)
        for _ in range(skip_in_stream * self.batch_size):
            next(samples)
        skipped.clear()  # the skipped batches' counts were reported by the run that trained on them
        for i in range(count):
            batch_index = self.skip_batches + worker + i * self.workers
            yield self.assemble([next(samples) for _ in range(self.batch_size)], batch_index, skipped)

    def relaid(self, worker: int):
        """This worker's batches of an epoch that began on `self.origin`, read from the origin's streams."""
        origin, streams, skipped = self.origin, {}, Counter()

        def origin_sample(origin_rank: int, origin_batch: int, offset: int) -> RawSample:
            slot = origin_rank * origin.workers + origin_batch % origin.workers
            position = origin_batch // origin.workers * origin.batch_size + offset
            if slot not in streams:
                stream = slot_samples(self.urls, seed=self.seed, epoch=self.epoch, slot=slot,
                                      slots=origin.world * origin.workers, resampled=self.resampled,
                                      shuffle_buffer=self.shuffle_buffer, skipped=Counter())
                streams[slot] = [stream, 0]
            stream, next_position = streams[slot]
            for _ in range(position - next_position):  # positions only grow: a stream is read once
                next(stream)
            streams[slot][1] = position + 1
            return next(stream)

        for batch_index in range(self.skip_batches + worker, self.batches_per_epoch, self.workers):
            raws = [origin_sample(*where) for where in origin_positions(origin, self.layout, self.rank, batch_index)]
            yield self.assemble(raws, batch_index, skipped)

    def decode(self, raw: RawSample) -> tuple:
        """(image [3, H, W] uint8, caption, key, meta, ViewRef or None); raises BadSample."""
        rng = seeded_rng(self.seed, self.epoch, raw.key)  # per sample: independent of stream position
        caption = pick_caption(raw.captions, raw.meta, self.augment.style, rng)
        if not self.views:
            # Transparency kept: train_pixels composites it on the (possibly random) background.
            image = train_pixels(open_image(raw.image), self.image_size, rng, self.augment)
            return image, caption, raw.key, raw.meta, None
        view = self.renderer.pick(self.epoch, raw.key, self.views)
        key = self.renderer.key(raw.image, raw.key, view)
        if self.view_cache is not None and entry_path(self.view_cache, key).is_file():
            blank = torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)
            return blank, caption, raw.key, raw.meta, ViewRef(key, raw.key, view, source=raw.image)
        image = self.renderer.pixels(raw.image, raw.key, view)
        return image, caption, raw.key, raw.meta, ViewRef(key, raw.key, view)

    def stand_in(self, batch_index: int) -> tuple:
        """A decodable sample for a batch whose images all failed: the first one found from a shard picked by
        (seed, epoch, rank, batch index), so a resumed run picks the same."""
        start = int(seeded_rng(self.seed, self.epoch, "stand-in", self.rank, batch_index).integers(len(self.urls)))
        for raw in parsed_samples(self.urls[start:] + self.urls[:start], Counter()):
            try:
                return self.decode(raw)
            except BadSample:
                continue
        raise MmtoolError(f"no decodable image in the {len(self.urls)} shard(s) starting {self.urls[0]}")

    def assemble(self, raws: list[RawSample], batch_index: int, skipped: Counter) -> dict:
        """Decodes and augments; `skipped` (counts since the previous batch) travels in the batch and is reset."""
        good = []
        for raw in raws:
            try:
                good.append(self.decode(raw))
            except BadSample as err:
                skipped[err.reason] += 1
        good = good or [self.stand_in(batch_index)]
        filled = [good[i % len(good)] for i in range(len(raws))]
        batch = {"image": torch.stack([f[0] for f in filled]),  # [B, 3, H, W]
                 "caption": [f[1] for f in filled], "key": [f[2] for f in filled], "meta": [f[3] for f in filled],
                 "skipped": dict(skipped)}
        if self.views:
            batch["view"] = [f[4] for f in filled]
        skipped.clear()
        return batch


class TrainLoader:
    """Iterable over one rank's batches of an epoch; `skipped` totals the skip counts of the batches seen."""

    def __init__(self, dataset: ShardBatches, workers: int, batches: int):
        self.dataset, self.workers, self.batches = dataset, workers, batches
        self.skipped = Counter()

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        # Pinned batches: the copy to a GPU can then run beside the step before (mmtool/device_prefetch.py).
        batches = (DataLoader(self.dataset, batch_size=None, num_workers=self.workers, in_order=True,
                              worker_init_fn=worker_guard(), pin_memory=torch.cuda.is_available())
                   if self.workers else self.dataset)
        for batch in batches:
            self.skipped.update(batch["skipped"])
            yield batch


def make_train_loader(urls: list[str], *, batch_size: int, image_size: int, epoch: int, seed: int, rank: int,
                      world_size: int, workers: int, batches_per_epoch: int, skip_batches: int = 0,
                      shuffle_buffer: int = 1000, augment: AugmentConfig = AugmentConfig(),
                      resampled: bool = False, views: int = 0, view_cache: Path | None = None,
                      origin: Layout | None = None) -> TrainLoader:
    """Exactly batches_per_epoch - skip_batches batches of {"image": [B, 3, H, W] uint8 pixels (normalize_pixels
    on the training device), "caption": [B] (a random phrasing per sample), "key": [B], "meta": [B] json dicts,
    "skipped": {reason: count since the previous batch}}, the same on every run; batch k of a skip_batches=k run is
    batch k of a fresh run. `views` > 0: each image one of that many fixed augmented views, and "view": [B] ViewRef;
    `view_cache`: the trunk cache's folder, whose views are not decoded; `origin`: the layout the epoch began on, when
    another (module docstring)."""
    if not urls:
        raise MmtoolError("make_train_loader got no shard urls")
    if batch_size < 1 or workers < 0 or not 0 <= rank < world_size:
        raise MmtoolError(f"bad loader setting: batch_size={batch_size} workers={workers} rank={rank} "
                          f"world_size={world_size}")
    dataset = ShardBatches(urls, batch_size=batch_size, image_size=image_size, epoch=epoch, seed=seed, rank=rank,
                           world_size=world_size, workers=workers, batches_per_epoch=batches_per_epoch,
                           skip_batches=skip_batches, shuffle_buffer=shuffle_buffer, augment=augment,
                           resampled=resampled, views=views, view_cache=view_cache, origin=origin)
    return TrainLoader(dataset, workers, max(batches_per_epoch - skip_batches, 0))


def make_eval_set(urls: list[str], image_size: int, label_fields=("group", "subgroup"),
                  as_crops: bool = False) -> dict:
    """Every usable sample of the shards, in order, eval-transformed into memory.

    Returns {"image": [N, 3, H, W], "caption": [N] canonical captions, "labels": {field: [N]}, "key": [N],
    "skipped": {reason: count}}; a label field is kept only when every sample has it as a string or number.
    as_crops holds "crop", the [N] RGB crops before normalisation, instead of "image", for style views
    (stage1_clip/style_views.py): a quarter of the memory, and no tensor the views would not read.
    """
    skipped = Counter()
    images, captions, keys, metas = [], [], [], []
    for raw in progress(parsed_samples(urls, skipped), desc="read eval set", unit="img"):
        try:
            crop = eval_crop(load_image(raw.image), image_size)
        except BadSample as err:
            skipped[err.reason] += 1
            continue
        images.append(crop if as_crops else to_normalized_tensor(crop))
        captions.append(raw.captions[0])
        keys.append(raw.key)
        metas.append(raw.meta)
    if not images:
        raise MmtoolError(f"no usable sample in {len(urls)} eval shard(s) starting {urls[0] if urls else '(none)'}"
                          f" (skipped: {dict(skipped) or 'none'})")
    labels = {field: [str(m[field]) for m in metas] for field in label_fields
              if all(isinstance(m.get(field), (str, int)) and str(m[field]) for m in metas)}
    pixels = {"crop": images} if as_crops else {"image": torch.stack(images)}  # image: [N, 3, H, W]
    return {**pixels, "caption": captions, "labels": labels, "key": keys, "skipped": dict(skipped)}
