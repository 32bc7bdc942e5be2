"""Image decoding guards and CLIP preprocessing numerics."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mmtool.data.reading.images import (CLIP_MEAN, CLIP_STD, AugmentConfig, BadSample, eval_crop, eval_transform,
                                         load_image, normalize_pixels, random_resized_crop_box, to_crop, train_pixels,
                                         train_transform)


def png_bytes(img: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG", **save_args)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but carries no pixel data: enough to test size guards cheaply."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def normalized(rgb) -> np.ndarray:
    return (np.asarray(rgb, dtype=np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def test_eval_transform_centre_crops_and_normalizes_like_a_hand_computation():
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)  # [H, W, 3]: four distinct columns
    for column, value in enumerate((10, 80, 160, 240)):
        pixels[:, column] = (value, 255 - value, value // 2)
    out = eval_transform(Image.fromarray(pixels), 2)  # shorter side is already 2: crop only
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    expected = normalized(pixels[:, 1:3]).transpose(2, 0, 1)  # centre columns 1 and 2
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_eval_transform_resizes_the_shorter_side():
    out = eval_transform(Image.new("RGB", (40, 20), (200, 100, 50)), 8)
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(normalized((200, 100, 50))[:, None, None], (3, 8, 8)),
                               atol=1.5 / 255 / CLIP_STD.min())


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    img.putpixel((1, 0), (255, 0, 0, 128))  # half-transparent red -> pink
    out = np.asarray(load_image(png_bytes(img)))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1, 0] == 255 and abs(int(out[0, 1, 1]) - 127) <= 1 and abs(int(out[0, 1, 2]) - 127) <= 1

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    out = np.asarray(load_image(png_bytes(palette, transparency=0)))
    assert out[0].tolist() == [[255, 255, 255], [0, 0, 255]]


@pytest.mark.parametrize("data, reason", [
    (b"not an image at all", "unreadable_image"),
    (png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60], "unreadable_image"),  # truncated
    (png_header_only(9000, 9000), "bomb"),  # 81M pixels > 8k x 8k
    (png_header_only(100_000, 100_000), "bomb"),  # beyond Pillow's own bomb error
])
def test_bad_images_raise_bad_sample(data, reason):
    with pytest.raises(BadSample) as caught:
        load_image(data)
    assert caught.value.reason == reason


def test_zero_size_image_is_a_bad_sample():
    with pytest.raises(BadSample):
        load_image(png_header_only(0, 10))


def test_train_transform_is_a_function_of_the_rng():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    first = train_transform(img, 16, np.random.default_rng(5))
    assert first.shape == (3, 16, 16)
    assert torch.equal(first, train_transform(img, 16, np.random.default_rng(5)))
    assert not torch.equal(first, train_transform(img, 16, np.random.default_rng(6)))


def test_training_pixels_travel_as_uint8_and_normalise_like_the_float64_formula():
    """The loader ships train_pixels (uint8); normalize_pixels on the training device gives train_transform."""
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    pixels = train_pixels(img, 16, np.random.default_rng(7))
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 16, 16)
    assert torch.equal(normalize_pixels(pixels), train_transform(img, 16, np.random.default_rng(7)))
    batch = torch.stack([pixels, pixels.flip(-1)])  # [2, 3, 16, 16]
    reference = (batch.double() / 255.0 - torch.from_numpy(CLIP_MEAN).double().view(3, 1, 1)) / \
        torch.from_numpy(CLIP_STD).double().view(3, 1, 1)
    out = normalize_pixels(batch)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference, rtol=0, atol=1e-6)
    bf16 = normalize_pixels(batch, torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, out.to(torch.bfloat16))


def test_full_crop_equals_eval_transform_on_a_square_image():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    full = AugmentConfig(random_resized_crop_scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(train_transform(img, 12, np.random.default_rng(0), full).numpy(),
                               eval_transform(img, 12).numpy(), atol=1e-5)


def test_random_resized_crop_boxes_stay_inside_and_keep_the_area_share():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        left, top, right, bottom = random_resized_crop_box(100, 60, rng, (0.5, 0.9), (0.75, 4 / 3))
        assert 0 <= left < right <= 100 and 0 <= top < bottom <= 60
        assert 0.45 <= (right - left) * (bottom - top) / 6000 <= 0.95


def test_to_crop_gives_back_the_exact_crop_a_tensor_was_made_from():
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), "RGB")  # every value, no structure
    crop = eval_crop(image, 32)
    assert np.array_equal(np.asarray(to_crop(eval_transform(image, 32))), np.asarray(crop))
