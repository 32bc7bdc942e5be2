"""Issue 16, finding 1: an image of extreme aspect ratio costs what its output costs, not what upscaling it would."""
import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from mmtool.data.reading.images import BadSample, eval_transform, load_image, open_image

pytestmark = pytest.mark.faults

# Run in a child whose address space is capped a little above what it holds after the imports: the old transform
# (shorter side up to 224, then crop) asked for ~13 GB here and must fail, not take the test machine down.
CHILD = textwrap.dedent("""
    import io, resource, sys, time
    from PIL import Image
    from mmtool.data.reading.images import eval_transform, load_image
    width, height, headroom_mb = (int(a) for a in sys.argv[1:])
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    with open("/proc/self/status") as status:
        vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    cap = (vm_kb * 1024) + headroom_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    started = time.perf_counter()
    pixels = eval_transform(load_image(buffer.getvalue()), 224)
    print(tuple(pixels.shape), round(time.perf_counter() - started, 3))
""")


@pytest.mark.parametrize("width,height", [(1, 65536), (65536, 1), (3, 40000)])
@pytest.mark.slow
def test_extreme_aspect_ratio_takes_little_memory_and_time(width, height):
    done = subprocess.run([sys.executable, "-c", CHILD, str(width), str(height), "64"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    shape, seconds = done.stdout.rsplit(")", 1)
    assert shape + ")" == "(3, 224, 224)"
    assert float(seconds) < 0.5


def test_eval_transform_matches_resize_then_crop_on_moderate_images():
    """The bounded transform gives the pixels the full resize-then-crop gives (what transformers' processor does)."""
    rng = np.random.default_rng(0)
    for width, height in [(40, 20), (20, 41), (33, 97), (224, 224), (300, 260), (7, 5)]:
        img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        np.testing.assert_allclose(eval_transform(img, 16).numpy(), resize_then_crop(img, 16).numpy(), atol=1e-5)


def resize_then_crop(img: Image.Image, size: int):
    """The old transform, kept here as the reference."""
    from mmtool.data.reading.images import to_normalized_tensor

    scale = size / min(img.size)
    new = (size, int(img.height * scale)) if img.width <= img.height else (int(img.width * scale), size)
    img = img.resize(new, Image.BICUBIC) if new != img.size else img
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return to_normalized_tensor(img.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("error,reason", [(MemoryError, "out_of_memory"), (Image.DecompressionBombError, "bomb")])
def test_running_out_of_memory_while_decoding_is_a_bad_sample(monkeypatch, error, reason):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")

    def fail(self):
        raise error("too big")

    monkeypatch.setattr("PIL.PngImagePlugin.PngImageFile.load", fail)
    with pytest.raises(BadSample) as caught:
        open_image(buffer.getvalue())
    assert caught.value.reason == reason


@pytest.mark.slow
def test_chat_refuses_an_unreadable_image_in_one_line(tmp_path):
    garbage = tmp_path / "photo.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    done = subprocess.run([sys.executable, "-c", "from mmtool.cli import main; main()", "chat", "what is it?",
                           "--model", str(tmp_path / "vlm.pt"), "--image", str(garbage)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"mmtool: error: --image {garbage}: unreadable_image")
    assert done.stderr.count("\n") == 1


def test_ask_refuses_an_unreadable_hit_image_in_one_line(monkeypatch):
    from mmtool.errors import MmtoolError
    from mmtool.index import ask as ask_module
    from mmtool.index.image_index import Hit

    hit = Hit(rank=1, score=0.9, path="pics/cat.png", caption=None, fields={}, sha256="0" * 64)

    class OneHitIndex:
        def search(self, text, k):
            return [hit]

    class Bundle:
        model = tokenizer = num_image_tokens = None  # never reached: the image is refused first

        @staticmethod
        def preprocess(data: bytes):
            return eval_transform(load_image(data), 8)

    monkeypatch.setattr(ask_module, "hit_image", lambda index, found: (b"garbage", "thumbnail"))
    with pytest.raises(MmtoolError, match=r"^pics/cat.png \(thumbnail\): unreadable_image"):
        ask_module.ask(OneHitIndex(), Bundle(), "a cat?")
