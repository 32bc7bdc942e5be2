"""data.max_samples: a seeded subset in file order, and a line that says the data was cut; data.style_views: one
seeded styled view per image, the same on every read."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmtool.data.reading.augment import StyleAugment, after_crop
from mmtool.data.reading.images import eval_transform, to_normalized_tensor
from mmtool.errors import MmtoolError
from stage3_llm.training_data import capped, training_view


def test_a_cap_keeps_a_seeded_subset_in_file_order_and_says_so():
    conversations = [f"c{i}" for i in range(10)]
    kept, note = capped(conversations, 4, seed=3, where="mine.json")
    expected = sorted(np.random.default_rng(3).permutation(10)[:4])  # the same draw, computed here
    assert kept == [f"c{i}" for i in expected]
    assert note == ("data.max_samples=4: training on 4 of the 10 conversations in mine.json (a seeded subset; "
                    "--set data.max_samples=null trains on all)")
    assert capped(conversations, 4, seed=3, where="mine.json")[0] == kept  # same seed, same subset


def test_no_cap_or_a_cap_above_the_data_keeps_everything_quietly():
    conversations = ["a", "b", "c"]
    assert capped(conversations, None, seed=0, where="x") == (conversations, None)
    assert capped(conversations, 3, seed=0, where="x") == (conversations, None)


def drawings(count: int) -> list[Image.Image]:
    images = []
    for index in range(count):
        img = Image.new("RGB", (40, 40), (250, 240 - 20 * index, 30 * index))
        ImageDraw.Draw(img).ellipse((6 + index, 8, 30, 34 - index), fill=(20 * index, 90, 200), outline=(0, 0, 0))
        images.append(img)
    return images


def test_a_styled_view_is_the_crop_restyled_by_the_augment_drawn_from_the_generator():
    img, style = drawings(1)[0], StyleAugment(contour=1.0, stroke=1.0)
    expected = to_normalized_tensor(after_crop(img, style, np.random.default_rng(5)))  # the 40 px crop is the image
    assert torch.equal(eval_transform(img, 40, style, np.random.default_rng(5)), expected)
    assert not torch.equal(expected, eval_transform(img, 40))


def test_training_views_are_seeded_per_image_and_run_and_off_by_default():
    images, style = drawings(6), StyleAugment(contour=1.0, stroke=0.5, grayscale=0.5)
    view = training_view(style, 32, seed=0)
    first = [view(img) for img in images]
    assert all(torch.equal(a, view(img.copy())) for a, img in zip(first, images))  # one view per image, every read
    assert all(not torch.equal(a, eval_transform(img, 32)) for a, img in zip(first, images))  # contour: always on
    other_run = [training_view(style, 32, seed=1)(img) for img in images]
    assert any(not torch.equal(a, b) for a, b in zip(first, other_run))
    plain = training_view(StyleAugment(), 32, seed=0)
    assert all(torch.equal(plain(img), eval_transform(img, 32)) for img in images)


def test_style_switches_that_need_the_uncropped_drawing_are_refused():
    with pytest.raises(MmtoolError, match="data.style_views.rotation: stage 3 restyles the centre crop only"):
        training_view(StyleAugment(rotation=10.0), 32, seed=0)
