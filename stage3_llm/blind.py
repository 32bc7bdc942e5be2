"""The blind baselines' images: a model that does not look at its image scores the same with these.

- blank: the all-zero tensor after normalisation, i.e. the dataset-mean grey image: no content at all;
- shuffled: each conversation gets the image of another conversation of the same set (a seeded derangement of the
  set's distinct images, so no conversation keeps its own picture, and conversations sharing an image share its
  replacement): real-looking inputs that carry the wrong answer.
"""
import torch

from mmtool.data.reading.sample_stream import seeded_rng
from mmtool.errors import MmtoolError

BLANK = "<blank>"  # the image reference standing for the blank image
BLIND_IMAGES = ("blank", "shuffled")


def parse_blind(text: str) -> tuple[str, ...]:
    """"blank,shuffled" / "shuffled" / "none" -> the blind copies to answer with, in BLIND_IMAGES order."""
    names = {name.strip() for name in text.split(",") if name.strip()} - {"none"}
    unknown = sorted(names - set(BLIND_IMAGES))
    if unknown:
        raise MmtoolError(f"--blind {text!r}: unknown {unknown[0]!r} (known: {', '.join(BLIND_IMAGES)}, none)")
    return tuple(name for name in BLIND_IMAGES if name in names)


def blank_image(image_size: int) -> torch.Tensor:
    return torch.zeros(3, image_size, image_size)  # [3, S, S]: the normalised mean colour everywhere


def shuffled_images(references: list[str], seed: int, where: str) -> dict[str, str]:
    """{image: the image shown instead}: a random cyclic order of the distinct images, each mapped to the next,
    so every image is replaced by a different one."""
    distinct = sorted(set(references))
    if len(distinct) < 2:
        raise MmtoolError(f"{where}: the shuffled-image baseline needs at least 2 distinct images")
    order = [distinct[i] for i in seeded_rng(seed, "shuffled-images").permutation(len(distinct))]
    return {image: order[(index + 1) % len(order)] for index, image in enumerate(order)}
