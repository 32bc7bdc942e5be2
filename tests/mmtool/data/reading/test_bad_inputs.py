"""The bad-input suite for the image decoder and the shard reader (issue 16): every odd-but-valid image is read
with the right pixels, every bad one is a BadSample with its reason, every bad shard sample is skipped and
counted while the good ones around it come through. `pytest -m faults` runs it with the other fault suites."""
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtool.data.building.shard_writer import SplitWriter
from mmtool.data.reading.images import BadSample, eval_transform, load_image
from mmtool.data.reading.loader import make_eval_set, resolve_shards
from mmtool.data.reading.sample_format import encode_sample
from mmtool.data.reading.sample_stream import parsed_samples

pytestmark = pytest.mark.faults


def encoded(image: Image.Image, format: str, **options) -> bytes:  # noqa: A002 (Pillow's name)
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def red_rgb(size=(24, 16)) -> Image.Image:
    return Image.new("RGB", size, (200, 30, 30))


def palette_with_transparency() -> bytes:
    """A P-mode PNG: left half opaque red, right half fully transparent (index 1 in the tRNS chunk)."""
    image = Image.new("P", (16, 16), 0)
    image.putpalette([200, 30, 30, 0, 0, 0] + [0] * 762)
    image.paste(1, (8, 0, 16, 16))
    return encoded(image, "PNG", transparency=1)


def gray16_ramp() -> bytes:
    """A 16-bit greyscale PNG whose rows go from 0 to 65535."""
    ramp = np.repeat(np.linspace(0, 65535, 32).astype(np.uint16)[:, None], 32, axis=1)  # [32, 32]
    return encoded(Image.fromarray(ramp), "PNG")


def cmyk_jpeg() -> bytes:
    return encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 55)), "JPEG", quality=95)  # red in CMYK


def real_bomb() -> bytes:
    """A real 1-bit 9000 x 9000 PNG (about 10 KB compressed, 81 M pixels: over mmtool's 8k x 8k limit)."""
    return encoded(Image.new("1", (9000, 9000), 0), "PNG")


VALID = {  # name -> (bytes, check of the decoded RGB array [H, W, 3] uint8)
    "cmyk_jpeg": (cmyk_jpeg, lambda a: a[..., 0].mean() > 150 and a[..., 1:].mean() < 80),
    "gray16_png": (gray16_ramp, lambda a: a[0].mean() < 10 and a[-1].mean() > 245 and 100 < a.mean() < 155),
    "palette_transparency_png": (palette_with_transparency,
                                 lambda a: (a[:, :8] == (200, 30, 30)).all() and (a[:, 8:] == 255).all()),
    "one_by_one_png": (lambda: encoded(red_rgb((1, 1)), "PNG"), lambda a: a.shape == (1, 1, 3)),
    "la_png": (lambda: encoded(Image.new("LA", (8, 8), (0, 0)), "PNG"), lambda a: (a == 255).all()),  # clear: white
    "one_bit_png": (lambda: encoded(Image.new("1", (8, 8), 1), "PNG"), lambda a: (a == 255).all()),
    "webp": (lambda: encoded(red_rgb(), "WEBP", lossless=True), lambda a: (a == (200, 30, 30)).all()),
    "progressive_jpeg": (lambda: encoded(red_rgb(), "JPEG", progressive=True, quality=95),
                         lambda a: abs(a[..., 0].mean() - 200) < 8),
    "wide_1x20000_png": (lambda: encoded(red_rgb((20000, 1)), "PNG"), lambda a: a.shape == (1, 20000, 3)),
    "tall_20000x1_png": (lambda: encoded(red_rgb((1, 20000)), "PNG"), lambda a: a.shape == (20000, 1, 3)),
}

BAD = {  # name -> (bytes, expected reason)
    "zero_bytes": (lambda: b"", "unreadable_image"),
    "truncated_png": (lambda: encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")[:300],
                      "unreadable_image"),
    "truncated_jpeg": (lambda: encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:400],
                       "unreadable_image"),
    "garbage": (lambda: bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "unreadable_image"),
    "png_signature_only": (lambda: b"\x89PNG\r\n\x1a\n", "unreadable_image"),
    "text_file": (lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unreadable_image"),
    "decompression_bomb": (real_bomb, "bomb"),
}


@pytest.mark.parametrize("name", VALID)
def test_odd_but_valid_images_are_read_with_the_right_pixels(name):
    make, check = VALID[name]
    image = load_image(make())
    array = np.asarray(image)
    assert image.mode == "RGB" and check(array), (name, array.shape, array.reshape(-1, 3)[:3])
    pixels = eval_transform(image, 16)  # [3, 16, 16]
    assert pixels.shape == (3, 16, 16) and pixels.isfinite().all()


@pytest.mark.parametrize("name", BAD)
def test_bad_images_are_a_bad_sample_with_their_reason(name):
    make, reason = BAD[name]
    with pytest.raises(BadSample) as refused:
        load_image(make())
    assert refused.value.reason == reason and "\n" not in str(refused.value)


def sample(key: str, caption: str = "a red square", **members) -> dict:
    encoded_sample = encode_sample(key, encoded(red_rgb(), "PNG"), [caption], {"group": "shapes"})
    encoded_sample.update(members)
    return {k: v for k, v in encoded_sample.items() if v is not None}


SHARD_CASES = {  # key -> (members, what happens: a skip reason, or "read")
    "ok_first": (sample("ok_first"), "read"),
    "empty_caption": (sample("empty_caption", json=json.dumps({"captions": [""]}).encode(), txt=b""), "empty_caption"),
    "blank_caption": (sample("blank_caption", json=json.dumps({"captions": [" \t\n"]}).encode(), txt=b"  \n"),
                      "empty_caption"),
    "latin1_txt_only": (sample("latin1_txt_only", json=None, txt="caf\u00e9 au lait".encode("latin-1")), "read"),
    "latin1_json": (sample("latin1_json", json='{"captions": ["caf\u00e9"]}'.encode("latin-1")), "bad_json"),
    "json_list": (sample("json_list", json=b"[1, 2]"), "bad_json"),
    "no_image": (sample("no_image", png=None), "missing_image"),
    "no_caption_at_all": (sample("no_caption_at_all", json=None, txt=None), "empty_caption"),
    "zero_byte_image": (sample("zero_byte_image", png=b""), "missing_image"),
    "garbage_image": (sample("garbage_image", png=b"\x00" * 64), "unreadable_image"),
    "caption_5000_words": (sample("caption_5000_words", " ".join(["word"] * 5000)), "read"),
    "ok_last": (sample("ok_last"), "read"),
}


@pytest.fixture(scope="module")
def odd_shards(tmp_path_factory):
    """One shard with every case above, and a second whose tar is cut in half."""
    out = tmp_path_factory.mktemp("odd_shards")
    with SplitWriter(out, shard_size=len(SHARD_CASES)) as writer:
        for members, _ in SHARD_CASES.values():
            writer.write("train", members)
        for i in range(8):
            writer.write("train", sample(f"cut_{i}"))
    cut = out / "train-000001.tar"
    data = cut.read_bytes()
    cut.write_bytes(data[:len(data) // 2 + 100])  # mid-way through a member
    return out


def test_every_bad_shard_sample_is_skipped_and_counted_and_every_good_one_read(odd_shards):
    urls = resolve_shards(str(odd_shards / "train-*.tar"))
    eval_set = make_eval_set(urls, 16)
    expected_read = [key for key, (_, outcome) in SHARD_CASES.items() if outcome == "read"]
    read_from_whole = [key for key in eval_set["key"] if not key.startswith("cut_")]
    assert read_from_whole == expected_read
    cut_read = [key for key in eval_set["key"] if key.startswith("cut_")]
    assert 0 < len(cut_read) < 8 and cut_read == [f"cut_{i}" for i in range(len(cut_read))]  # those before the cut
    expected_skips = Counter(outcome for _, outcome in SHARD_CASES.values() if outcome != "read")
    assert Counter(eval_set["skipped"]) == expected_skips + Counter(bad_shard=1)
    long_caption = eval_set["caption"][eval_set["key"].index("caption_5000_words")]
    assert len(long_caption.split()) == 5000  # kept whole; the tokenizer truncates it to its context
    latin1 = eval_set["caption"][eval_set["key"].index("latin1_txt_only")]
    assert latin1.startswith("caf") and latin1.endswith(" au lait")  # the odd byte replaced, the rest read


def test_a_tar_of_garbage_counts_as_one_bad_shard(tmp_path):
    (tmp_path / "train-000000.tar").write_bytes(b"\x00garbage" * 300)
    skipped = Counter()
    assert list(parsed_samples([str(tmp_path / "train-000000.tar")], skipped)) == []
    assert skipped == Counter(bad_shard=1)


def test_an_empty_tar_reads_as_no_sample(tmp_path):
    with tarfile.open(tmp_path / "train-000000.tar", "w"):
        pass
    skipped = Counter()
    assert list(parsed_samples([str(tmp_path / "train-000000.tar")], skipped)) == [] and not skipped


def test_index_build_reads_every_valid_image_and_counts_every_bad_one(tiny_clip_checkpoint, tmp_path):
    from mmtool.index import ImageIndex

    folder = tmp_path / "images"
    folder.mkdir()
    for name, (make, _) in {**VALID, **BAD}.items():
        extension = "jpg" if "jpeg" in name else "webp" if name == "webp" else "png"
        (folder / f"{name}.{extension}").write_bytes(make())
    index, report = ImageIndex.build(str(folder), tiny_clip_checkpoint, tmp_path / "index", progress=False)
    assert sorted(Path(item["path"]).stem for item in index.items) == sorted(VALID)
    assert report.skipped() == Counter(reason for _, reason in BAD.values())


def test_serve_answers_every_valid_query_image_and_refuses_every_bad_one(tiny_clip_checkpoint, tmp_path):
    import threading
    import urllib.error
    import urllib.request

    from mmtool.index import ImageIndex
    from mmtool.index.server import make_server

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "one.png").write_bytes(encoded(red_rgb(), "PNG"))
    index, _ = ImageIndex.build(str(folder), tiny_clip_checkpoint, tmp_path / "index", progress=False)
    server = make_server(index, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/search-image?k=1"
    try:
        for name, (make, outcome) in {**VALID, **BAD}.items():
            data = make()
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=data or b"x"), timeout=30) as answer:
                    status, body = answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as err:
                status, body = err.code, json.loads(err.read())
            if name in VALID:
                assert status == 200 and len(body) == 1, name
            elif data:
                assert status == 400 and body["error"].startswith(f"query image: {outcome}"), (name, body)
            else:  # an empty upload is refused by its Content-Length
                assert status == 400, name
    finally:
        server.shutdown()
        server.server_close()
