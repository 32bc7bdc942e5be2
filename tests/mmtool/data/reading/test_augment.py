"""Style-shift augmentations: each switch against a reference computed another way; off means unchanged;
determinism through the loader (same sample, same augmentation, also after a resume)."""
import colorsys
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mmtool.config import load_config
from mmtool.data.reading.augment import (CONTOUR_EDGE, StyleAugment, contour, jitter_colours, outline, pick_caption,
                                        rotate, stroke)
from mmtool.data.reading.images import (CLIP_MEAN, CLIP_STD, AugmentConfig, flatten_on_white, random_resized_crop_box,
                                train_transform)
from mmtool.data.building.shard_writer import SplitWriter, write_meta
from mmtool.data.reading.loader import make_train_loader, resolve_shards
from mmtool.data.reading.sample_format import encode_sample
from mmtool.errors import MmtoolError
from stage1_clip.config import ClipConfig

FULL_CROP = dict(random_resized_crop_scale=(1.0, 1.0), ratio=(1.0, 1.0))
TEMPLATES = ("a drawing of {name}", "{name}: {keywords}", "a {subgroup} icon", "made by {artist}")
META = {"name": "grinning face", "keywords": ["face", "grin", "smile", "happy"], "subgroup": "face-smiling"}


def pixels(tensor: torch.Tensor) -> np.ndarray:
    """A train_transform output back to 0..255 RGB, [H, W, 3] float64."""
    return (tensor.numpy().transpose(1, 2, 0).astype(np.float64) * CLIP_STD + CLIP_MEAN) * 255.0


def transform(img: Image.Image, seed: int, size: int = 24, **switches) -> np.ndarray:
    augment = AugmentConfig(**FULL_CROP, style=StyleAugment(**switches))
    return pixels(train_transform(img, size, np.random.default_rng(seed), augment))


def drawing(size: int = 32) -> Image.Image:
    """A transparent RGBA canvas with an opaque two-colour shape off centre."""
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[6:20, 8:26] = (230, 40, 30, 255)
    rgba[10:14, 4:12] = (20, 90, 200, 255)
    return Image.fromarray(rgba, "RGBA")


def random_image(seed: int, size: int = 24) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_all_switches_off_is_the_plain_transform_on_white():
    img = drawing()
    for seed in range(5):
        plain = train_transform(flatten_on_white(img), 16, np.random.default_rng(seed))
        assert torch.equal(train_transform(img, 16, np.random.default_rng(seed)), plain)
        assert pick_caption(["a", "b", "c"], META, StyleAugment(), np.random.default_rng(seed)) == \
            "abc"[int(np.random.default_rng(seed).integers(3))]


def test_background_fills_transparent_pixels_with_the_drawn_colour():
    empty = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    colours = set()
    for seed in range(6):
        replay = np.random.default_rng(seed)
        replay.random()  # the p draw (always below 1.0)
        expected = replay.integers(0, 256, 3)
        out = transform(empty, seed, background=1.0)
        np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=0.01)
        colours.add(tuple(expected))
    assert len(colours) == 6
    opaque = transform(drawing(), 0, size=32, background=1.0)
    np.testing.assert_allclose(opaque[8, 16], (230, 40, 30), atol=0.01)  # the drawing itself keeps its colour


@pytest.mark.parametrize("degrees", [90.0, 30.0, -45.0])
def test_rotation_moves_a_dot_along_the_circle(degrees):
    rgba = np.zeros((41, 41, 4), np.uint8)
    rgba[19:22, 29:32] = 255  # a 3 x 3 dot centred 10 px right of the centre (20, 20)
    alpha = np.asarray(rotate(Image.fromarray(rgba, "RGBA"), degrees))[..., 3].astype(np.float64)
    ys, xs = np.indices(alpha.shape)
    centroid = (np.sum(xs * alpha) / alpha.sum(), np.sum(ys * alpha) / alpha.sum())
    # Counter-clockwise on screen: y grows downwards, so the dot moves up for positive angles.
    radians = math.radians(degrees)
    expected = (20 + 10 * math.cos(radians), 20 - 10 * math.sin(radians))
    np.testing.assert_allclose(centroid, expected, atol=0.3)


def test_rotation_draws_its_angle_from_the_sample_rng_and_corners_show_the_background():
    img = drawing(33)
    for seed in range(4):
        angle = np.random.default_rng(seed).uniform(-20.0, 20.0)  # the first draw
        out = transform(img, seed, size=33, rotation=20.0)
        expected = np.asarray(flatten_on_white(rotate(img, angle)), dtype=np.float64)
        np.testing.assert_allclose(out, expected, atol=0.01)
    square = Image.new("RGB", (33, 33), (0, 0, 0))
    np.testing.assert_allclose(transform(square, 0, size=33, rotation=20.0)[0, 0], (255, 255, 255), atol=0.01)


def test_grayscale_is_the_itu_r_601_luma():
    img = random_image(3)
    out = transform(img, 0, grayscale=1.0)
    rgb = np.asarray(img, dtype=np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    for channel in range(3):
        np.testing.assert_allclose(out[..., channel], luma, atol=1.01)


def test_posterize_keeps_only_the_top_bits():
    img = random_image(4)
    rgb = np.asarray(img).astype(np.int64)
    for seed in range(4):
        out = np.rint(transform(img, seed, posterize=1.0)).astype(np.int64)
        replay = np.random.default_rng(seed)
        random_resized_crop_box(24, 24, replay, (1.0, 1.0), (1.0, 1.0))  # the crop's draws come first
        replay.random()
        bits = int(replay.choice((2, 3, 4)))
        np.testing.assert_array_equal(out, rgb & (0xFF << (8 - bits)) & 0xFF)


def test_outline_draws_the_boundary_ring_outside_the_shape():
    rgb = np.full((20, 20, 3), 255, np.uint8)
    rgb[5:15, 5:15] = (200, 0, 0)
    lines = np.asarray(outline(Image.fromarray(rgb)))
    # Reference: a pixel is on the line when its 3 x 3 neighbourhood holds a darker pixel.
    luma = np.pad(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]), 1, mode="edge")
    darker_neighbour = np.zeros((20, 20), bool)
    for dy in range(3):
        for dx in range(3):
            darker_neighbour |= luma[dy:dy + 20, dx:dx + 20] < luma[1:21, 1:21] - 1
    np.testing.assert_array_equal(lines[..., 0] < 128, darker_neighbour)
    assert (lines[..., 0] == lines[..., 1]).all() and (lines[~darker_neighbour] == 255).all()


def neighbourhood(values: np.ndarray, reduce) -> np.ndarray:
    """[H, W(, C)] -> the `reduce` (np.minimum / np.maximum) over each pixel's 3 x 3 window, edges replicated."""
    height, width = values.shape[:2]
    padded = np.pad(values, [(1, 1), (1, 1)] + [(0, 0)] * (values.ndim - 2), mode="edge")
    out = values.copy()
    for dy in range(3):
        for dx in range(3):
            out = reduce(out, padded[dy:dy + height, dx:dx + width])
    return out


def laplacian_lines(rgb: np.ndarray) -> np.ndarray:
    """Reference for contour's lines: the 8-neighbour Laplacian of the 8-bit luma, clipped at 0, above the threshold."""
    luma = np.rint(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    padded = np.pad(luma, 1, mode="edge")
    neighbours = sum(padded[dy:dy + rgb.shape[0], dx:dx + rgb.shape[1]] for dy in range(3) for dx in range(3))
    return np.clip(9 * luma - neighbours, 0, 255) >= CONTOUR_EDGE


@pytest.mark.parametrize("width", [1, 2])
def test_contour_paints_the_shape_boundary_and_keeps_the_fills(width):
    rgb = np.full((24, 24, 3), 255, np.uint8)
    rgb[5:19, 5:19] = (200, 0, 0)
    rgb[9:14, 9:14] = (20, 120, 230)
    lines = laplacian_lines(rgb)
    if width == 2:
        lines = neighbourhood(lines, np.maximum)
    out = np.asarray(contour(Image.fromarray(rgb), width, shade=17))
    np.testing.assert_array_equal(out[lines], 17)
    np.testing.assert_array_equal(out[~lines], rgb[~lines])
    # Lines fall on the brighter side of a boundary: the white around the red square, the blue inside it.
    assert lines[4, 10] and lines[9, 11] and not lines[0, 0] and not lines[16, 16]


def test_stroke_thickens_or_thins_dark_lines():
    rgb = np.full((20, 20, 3), 255, np.uint8)
    rgb[4:16, 9:11] = (10, 10, 10)  # a 2-px dark stroke
    thicker, thinner = (np.asarray(stroke(Image.fromarray(rgb), t)) for t in (True, False))
    np.testing.assert_array_equal(thicker, neighbourhood(rgb, np.minimum))
    np.testing.assert_array_equal(thinner, neighbourhood(rgb, np.maximum))
    assert (thicker[10, :, 0] < 128).sum() == 4 and (thinner[10, :, 0] < 128).sum() == 0


def test_outline_wins_over_contour_and_contour_draws_from_the_sample_rng():
    img = drawing(24)
    np.testing.assert_array_equal(transform(img, 0, outline=1.0, contour=1.0), transform(img, 0, outline=1.0))
    for seed in range(4):
        replay = np.random.default_rng(seed)
        random_resized_crop_box(24, 24, replay, (1.0, 1.0), (1.0, 1.0))
        replay.random()  # the contour's p draw
        width, shade = int(replay.choice((1, 2))), int(replay.integers(0, 64))
        expected = np.asarray(contour(flatten_on_white(img).resize((24, 24), Image.BICUBIC), width, shade))
        np.testing.assert_allclose(transform(img, seed, contour=1.0), expected, atol=0.01)


def test_colour_jitter_matches_the_blend_formulas():
    img = random_image(5)
    rgb = np.asarray(img, dtype=np.float64)
    brightness, contrast, saturation = 1.3, 0.7, 1.4
    out = np.asarray(jitter_colours(img, brightness, contrast, saturation, 0.0), dtype=np.float64)
    weights = np.array([0.299, 0.587, 0.114])
    # Each step blends towards a degenerate image (black, the mean luma, the pixel's luma), truncated to 8 bits.
    step = np.clip(np.trunc(rgb * brightness), 0, 255)
    mean_luma = np.rint(np.mean(np.rint(step @ weights)))
    step = np.clip(np.trunc(mean_luma + contrast * (step - mean_luma)), 0, 255)
    luma = np.rint(step @ weights)[..., None]
    step = np.clip(np.trunc(luma + saturation * (step - luma)), 0, 255)
    np.testing.assert_allclose(out, step, atol=2.0)  # float32 arithmetic inside Pillow


def test_hue_shift_turns_the_colour_wheel():
    colours = np.array([[(220, 30, 30), (30, 200, 60), (40, 60, 210), (200, 180, 40)]], np.uint8)
    out = np.asarray(jitter_colours(Image.fromarray(colours), 1.0, 1.0, 1.0, 0.25)).astype(np.float64)
    for rgb, shifted in zip(colours[0] / 255.0, out[0] / 255.0):
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        np.testing.assert_allclose(shifted, colorsys.hsv_to_rgb((h + 0.25) % 1.0, s, v), atol=0.04)


def test_caption_templates_fill_sample_fields_and_keyword_dropout_drops_items():
    stored = ["an emoji of grinning face", "grinning face"]
    aug = StyleAugment(caption_templates=TEMPLATES, keyword_dropout=0.5)
    seen = [pick_caption(stored, META, aug, np.random.default_rng(seed)) for seed in range(3000)]
    assert {"a drawing of grinning face", "a face-smiling icon", *stored} <= set(seen)
    assert not any("artist" in c or "made by" in c for c in seen)  # the sample has no such field
    joined = [c.split(": ", 1)[1] for c in seen if c.startswith("grinning face: ")]
    assert len(joined) > 200
    for text in joined:  # a subset of the keywords, in order
        kept = text.split(", ")
        assert kept == [k for k in META["keywords"] if k in kept]
    share = np.mean([len(t.split(", ")) for t in joined]) / len(META["keywords"])
    assert 0.5 < share < 0.65  # half kept on average; lists with nothing left drop the template (a bit above 0.5)
    everything = StyleAugment(caption_templates=TEMPLATES, keyword_dropout=1.0)
    assert not any(": " in pick_caption(stored, META, everything, np.random.default_rng(seed)) for seed in range(200))


@pytest.fixture(scope="module")
def rgba_shards(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("rgba_shards")
    writer = SplitWriter(out, shard_size=8)
    for i in range(24):
        rgba = np.zeros((24, 24, 4), np.uint8)
        rgba[4 + i % 8:16, 6:18 + i % 6] = (10 * i, 255 - 10 * i, 90, 255)
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
        writer.write("train", encode_sample(f"s{i:02d}", buffer.getvalue(), [f"caption {i}"],
                                            {**META, "name": f"thing {i}"}))
    write_meta(out, "synthetic", writer.close())
    return resolve_shards(str(out / "train-*.tar"))


ALL_ON = StyleAugment(background=0.5, rotation=15.0, color_jitter=0.4, hue=0.1, grayscale=0.3, posterize=0.3,
                      outline=0.3, contour=0.3, stroke=0.3, caption_templates=TEMPLATES, keyword_dropout=0.3)


def load(urls, style: StyleAugment, **settings) -> list[dict]:
    args = dict(batch_size=4, image_size=16, epoch=0, seed=0, rank=0, world_size=1, workers=0, batches_per_epoch=6,
                shuffle_buffer=8, augment=AugmentConfig(style=style))
    return list(make_train_loader(urls, **{**args, **settings}))


def test_loader_augments_deterministically_and_resumes_exactly(rgba_shards):
    fresh, plain = load(rgba_shards, ALL_ON, workers=2), load(rgba_shards, StyleAugment(), workers=2)
    resumed = load(rgba_shards, ALL_ON, workers=2, skip_batches=3)
    assert [b["key"] for b in fresh] == [b["key"] for b in plain]
    assert not any(torch.equal(a["image"], b["image"]) for a, b in zip(fresh, plain))
    assert any("thing" in c and c.startswith(("a drawing", "thing")) for b in fresh for c in b["caption"])
    for a, b in zip(resumed, fresh[3:]):
        assert a["key"] == b["key"] and a["caption"] == b["caption"] and torch.equal(a["image"], b["image"])
    other_epoch = load(rgba_shards, ALL_ON, epoch=1, batches_per_epoch=6)
    by_key = {k: img for b in fresh for k, img in zip(b["key"], b["image"])}
    assert any(not torch.equal(by_key[k], img) for b in other_epoch for k, img in zip(b["key"], b["image"])
               if k in by_key)


def test_config_section_reads_and_rejects_bad_switches(tmp_path):
    cfg = load_config(ClipConfig, None, ["data.augment.outline=0.2", 'data.augment.caption_templates=["{name}"]'])
    assert cfg.data.augment == StyleAugment(outline=0.2, caption_templates=("{name}",))
    for override, message in [("data.augment.grayscale=1.5", "grayscale is a probability"),
                              ("data.augment.hue=0.7", "hue is in"),
                              ("data.augment.contour=-0.1", "contour is a probability"),
                              ("data.augment.keyword_dropout=0.3", "set caption_templates"),
                              ('data.augment.caption_templates=["plain text"]', "uses no sample field"),
                              ('data.augment.caption_templates=["{0}"]', "sample field names"),
                              ("data.augment.blur=0.1", "unknown key 'blur'")]:
        with pytest.raises(MmtoolError, match=message):
            load_config(ClipConfig, None, [override])
