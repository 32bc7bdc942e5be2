"""Property-based fuzzing (Hypothesis) of the image decoder, the shard sample parser and the tar reader: whatever
the bytes, each returns a usable result or its own BadSample / skip count, never another exception. The budget is
bounded and the examples are derandomized, so the suite is fast and the same on every run."""
import io
import json
import tarfile
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmtool.data.reading.images import BadSample, eval_transform, load_image
from mmtool.data.reading.sample_format import parse_raw
from mmtool.data.reading.shard_reader import iter_tar_groups

pytestmark = pytest.mark.faults

BUDGET = settings(max_examples=60, deadline=timedelta(seconds=5), derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow])


def _encoded(format: str) -> bytes:  # noqa: A002 (Pillow's name)
    buffer = io.BytesIO()
    Image.effect_noise((24, 16), 40).convert("RGB").save(buffer, format)
    return buffer.getvalue()


SEEDS = {"PNG": _encoded("PNG"), "JPEG": _encoded("JPEG"), "WEBP": _encoded("WEBP")}


def decodes_or_refuses(data: bytes) -> None:
    try:
        image = load_image(data)
    except BadSample as err:
        assert err.reason in ("unreadable_image", "bomb", "empty_image", "out_of_memory") and "\n" not in str(err)
        return
    assert image.mode == "RGB"
    pixels = eval_transform(image, 8)  # [3, 8, 8]
    assert pixels.shape == (3, 8, 8) and pixels.isfinite().all()


@BUDGET
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_are_a_bad_sample(data):
    decodes_or_refuses(data)


@BUDGET
@given(st.sampled_from(sorted(SEEDS)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       st.integers(1, 10**6))
def test_mutated_images_decode_or_are_a_bad_sample(format, flips, cut):  # noqa: A002
    data = bytearray(SEEDS[format])
    for position, value in flips:
        data[position % len(data)] = value
    decodes_or_refuses(bytes(data[:cut]))


member_bytes = st.one_of(st.binary(max_size=64), st.text(max_size=40).map(str.encode),
                         st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                                      lambda inner: st.lists(inner, max_size=3) |
                                      st.dictionaries(st.sampled_from(["captions", "group", "x"]), inner, max_size=3),
                                      max_leaves=8).map(lambda value: json.dumps(value).encode()))


@BUDGET
@given(st.dictionaries(st.sampled_from(["png", "jpg", "webp", "txt", "json", "cls"]), member_bytes, max_size=5))
def test_any_sample_members_parse_or_are_a_bad_sample(members):
    try:
        raw = parse_raw({"__key__": "k", **members}, "fuzz.tar")
    except BadSample as err:
        assert err.reason in ("missing_image", "bad_json", "empty_caption")
        return
    assert raw.image and raw.captions and all(c == c.strip() and c for c in raw.captions)
    assert isinstance(raw.meta, dict)


def tar_of(names_and_data: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in names_and_data:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


VALID_TAR = tar_of([(f"{key}.{ext}", np.random.default_rng(i).bytes(300)) for i, key in enumerate("abc")
                    for ext in ("png", "txt")])


@BUDGET
@given(st.one_of(st.binary(max_size=2048),
                 st.tuples(st.integers(0, len(VALID_TAR)), st.binary(max_size=16)).map(
                     lambda cut: VALID_TAR[:cut[0]] + cut[1])))
def test_any_tar_bytes_yield_groups_or_count_a_bad_shard(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("tar") / "fuzz-000000.tar"
    path.write_bytes(data)
    skipped = Counter()
    groups = list(iter_tar_groups(str(path), skipped))
    assert set(skipped) <= {"bad_shard"} and skipped["bad_shard"] <= 1
    assert all(isinstance(group["__key__"], str) for group in groups)
    if data != VALID_TAR and len(data) < len(VALID_TAR) and data == VALID_TAR[:len(data)] and len(data) > 512:
        assert skipped["bad_shard"] == 1 or len(groups) == 3  # a cut tar is counted unless it lost only padding
