"""Stage 1's fixed augmented views (the image-trunk cache's unit): which view a sample shows in an epoch, how it is
drawn, and the cache key that names it without drawing it.

Image v of a sample is the live augmentation (mmtool/data/reading/images.py, train_pixels) drawn from a generator
seeded by (seed, "view", v, sample key); epoch e shows view (seed, e, "view", sample key) mod `views`. The key hashes
everything the drawn pixels depend on: the encoded image's bytes, the sample key, the view, the seed, the size, the
augmentation settings, and the drawing code itself (the source of images.py and augment.py, Pillow's and numpy's
versions), so an edit to an augmentation or a new Pillow resampler never serves an old view. Because the key needs
no pixels, a loader worker can leave out a view whose trunk output is already cached and skip decoding it.
"""
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy
import PIL
import torch

from mmtool.data.reading import augment as augment_module
from mmtool.data.reading import images as images_module
from mmtool.data.reading.images import AugmentConfig, open_image, train_pixels
from mmtool.data.reading.sample_stream import seeded_rng


@dataclass(frozen=True)
class ViewRef:
    """One sample's view in a batch: its cache key, and the encoded image (`source`) when the loader left the
    view's pixels out (zeros) because its trunk output was cached; None when the batch holds the pixels."""
    key: str
    sample_key: str
    view: int
    source: bytes | None = None


@functools.cache
def drawing_code_sha256() -> str:
    """sha256 of the code and library versions that turn image bytes into a view's pixels."""
    digest = hashlib.sha256(f"Pillow {PIL.__version__} numpy {numpy.__version__}".encode())
    for module in (images_module, augment_module):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ViewRenderer:
    """Draws and names the views of one run's settings."""
    seed: int
    image_size: int
    augment: AugmentConfig

    def pick(self, epoch: int, sample_key: str, views: int) -> int:
        """The view a sample shows in `epoch`."""
        return int(seeded_rng(self.seed, epoch, "view", sample_key).integers(views))

    def pixels(self, source: bytes, sample_key: str, view: int) -> torch.Tensor:
        """The view's pixels [3, S, S] uint8; raises BadSample for an undecodable image."""
        rng = seeded_rng(self.seed, "view", view, sample_key)
        # Transparency kept: train_pixels composites it on the (possibly random) background.
        return train_pixels(open_image(source), self.image_size, rng, self.augment)

    def key(self, source: bytes, sample_key: str, view: int) -> str:
        """sha256 naming the view's pixels (module docstring), computed without decoding the image."""
        settings = f"{drawing_code_sha256()} {self.seed} {self.image_size} {self.augment!r} {view} {sample_key!r}"
        digest = hashlib.sha256(settings.encode())
        digest.update(hashlib.sha256(source).digest())
        return digest.hexdigest()
