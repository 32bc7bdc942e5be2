"""Shard samples' images by sample key, for readers that name images by key (stage 3's `data.image_shards`).

Only a sample's image matters here: a sample whose caption or json is bad still lends its image. A sample without a
usable image (no image member, or an empty one), and a key lost with a shard that broke off, is a BadSample when it
is read, so the reader skips and counts it as every other reader does instead of refusing the whole set. A key
the shards never held is not found (a wrong key or wrong shards), unless a shard broke off: it may have held it.
"""
from collections import Counter
from dataclasses import dataclass, field

from mmtool.data.reading.images import BadSample
from mmtool.data.reading.sample_format import IMAGE_EXTENSIONS
from mmtool.data.reading.shard_reader import iter_tar_groups, resolve_shards


@dataclass
class ShardImages:
    images: dict[str, bytes] = field(default_factory=dict)  # key -> encoded image (decoded, and judged, when used)
    missing: set[str] = field(default_factory=set)  # keys whose sample has no image, or a zero-byte one
    bad_shards: int = 0  # shards that could not be opened or broke off mid-way

    def __contains__(self, key: str) -> bool:
        return key in self.images or key in self.missing or self.bad_shards > 0

    def read(self, key: str) -> bytes:
        """The encoded image; raises BadSample (missing_image, bad_shard) when the shards hold none for `key`."""
        if key in self.images:
            return self.images[key]
        if key in self.missing:
            raise BadSample("missing_image", f"shard sample {key!r} has no image")
        raise BadSample("bad_shard", f"{key!r} is not in the shards read, and {self.bad_shards} of them broke off")


def shard_images_by_key(spec: str) -> ShardImages:
    """Every sample's image of the shards (kept in memory: meant for small sets)."""
    found, skipped = ShardImages(), Counter()
    for url in resolve_shards(spec):
        for members in iter_tar_groups(url, skipped):
            image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
            if image:
                found.images[members["__key__"]] = image
            else:
                found.missing.add(members["__key__"])
    found.bad_shards = skipped["bad_shard"]
    return found
