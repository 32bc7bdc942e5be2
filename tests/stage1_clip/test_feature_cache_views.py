"""The image-trunk cache's view set (mmtool/data/reading/loader.py, `views`): each image is one of a fixed number of
augmented views, each a full draw of the live augmentation, picked per sample and epoch by a seed."""
import io
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from mmtool.data.building.shard_writer import SplitWriter, write_meta
from mmtool.data.reading.augment import StyleAugment
from mmtool.data.reading.images import AugmentConfig, open_image, train_pixels, train_transform
from mmtool.data.reading.loader import make_train_loader, resolve_shards
from mmtool.data.reading.sample_format import encode_sample
from mmtool.data.reading.sample_stream import seeded_rng

SAMPLES, EPOCHS, VIEWS = 16, 8, 2
# The default recipe's augmentation: random resized crop, grayscale 0.2, outline 0.2.
AUGMENT = AugmentConfig(random_resized_crop_scale=(0.8, 1.0), style=StyleAugment(grayscale=0.2, outline=0.2))


def drawing(i: int) -> bytes:
    pixels = np.full((24, 24, 3), 255, np.uint8)
    pixels[3 + i % 5:18, 4:20 - i % 4] = (15 * i, 200 - 10 * i, 60 + 8 * i)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("view_shards")
    writer = SplitWriter(out, shard_size=8)
    for i in range(SAMPLES):
        writer.write("train", encode_sample(f"s{i:02d}", drawing(i), [f"caption {i}"], {}))
    write_meta(out, "synthetic", writer.close())
    return resolve_shards(str(out / "train-*.tar"))


def epoch_images(urls, epoch: int, views: int) -> dict[str, torch.Tensor]:
    loader = make_train_loader(urls, batch_size=4, image_size=16, epoch=epoch, seed=3, rank=0, world_size=1,
                               workers=0, batches_per_epoch=SAMPLES // 4, shuffle_buffer=8, augment=AUGMENT,
                               views=views)
    return {key: image for batch in loader for key, image in zip(batch["key"], batch["image"])}


def test_each_image_is_one_of_its_fixed_views_drawn_with_the_live_augmentation(shards):
    expected = {}
    for i in range(SAMPLES):
        key = f"s{i:02d}"
        expected[key] = [train_pixels(open_image(drawing(i)), 16, seeded_rng(3, "view", v, key), AUGMENT)
                         for v in range(VIEWS)]
    seen = defaultdict(set)
    for epoch in range(EPOCHS):
        for key, image in epoch_images(shards, epoch, VIEWS).items():
            matches = [v for v, view in enumerate(expected[key]) if torch.equal(image, view)]
            assert matches, key
            seen[key].add(matches[0])
    assert len(seen) == SAMPLES
    assert sum(len(views) == VIEWS for views in seen.values()) >= SAMPLES // 2  # picks vary over the epochs
    assert all(not torch.equal(*expected[key]) for key in expected)  # the views differ (crop, style)


def test_the_pick_is_seeded_and_one_view_repeats_every_epoch(shards):
    assert all(torch.equal(a, b) for a, b in zip(epoch_images(shards, 2, VIEWS).values(),
                                                 epoch_images(shards, 2, VIEWS).values()))
    first, later = epoch_images(shards, 0, 1), epoch_images(shards, 5, 1)
    assert all(torch.equal(first[key], later[key]) for key in first)
    live_first, live_later = epoch_images(shards, 0, 0), epoch_images(shards, 5, 0)  # no views: a fresh draw
    assert sum(not torch.equal(live_first[key], live_later[key]) for key in live_first) > SAMPLES // 2


def test_view_styles_are_drawn_as_often_as_live(shards):
    """Over many samples, the share of grayscale-or-outline views matches the live draw's (0.36)."""
    rendered = []
    for i in range(400):
        rng = seeded_rng(3, "view", i % VIEWS, f"k{i}")
        image = train_transform(open_image(drawing(i % SAMPLES)), 16, rng, AUGMENT)
        rendered.append(bool(torch.allclose(image[0] * 0.26862954 + 0.48145466, image[1] * 0.26130258 + 0.4578275,
                                            atol=1e-3)))
    assert abs(np.mean(rendered) - 0.36) < 0.07
