"""The streaming train loader and the eval set: skips, determinism, resume, rank balance."""
import io
import json
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from mmtool.data.building.shard_writer import META_FILE, SplitWriter, write_meta
from mmtool.data.reading.images import to_normalized_tensor
from mmtool.data.reading.loader import make_eval_set, make_train_loader, resolve_shards, sample_count
from mmtool.data.reading.sample_format import encode_sample
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.data.reading.shard_reader import iter_tar_groups
from mmtool.errors import MmtoolError

GOOD = 37
DECODE_FAILURES = {"unreadable_image": 2, "bomb": 1}  # found only when the image is decoded
FIELD_FAILURES = {"empty_caption": 1, "missing_image": 1, "bad_json": 1}  # found before decoding


def png(color, size=(20, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def bomb_png() -> bytes:
    """A PNG header declaring 9000 x 9000 pixels (over the 8k x 8k limit) and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def good_sample(i: int) -> dict:
    labels = {"group": f"g{i % 3}", "subgroup": f"s{i % 5}"}
    return encode_sample(f"good{i:03d}", png((i * 6, 255 - i * 6, 100)), [f"caption {i}", f"phrasing {i}"], labels)


def bad_samples() -> list[dict]:
    truncated = png((1, 2, 3), size=(64, 64))[:70]
    samples = [encode_sample("bad_truncated", truncated, ["t"], {}), encode_sample("bad_garbage", b"junk", ["g"], {}),
               encode_sample("bad_bomb", bomb_png(), ["b"], {})]
    empty = encode_sample("bad_empty", png((9, 9, 9)), ["x"], {})
    empty.update(txt=b"  ", json=json.dumps({"captions": [""]}).encode())
    missing = encode_sample("bad_missing", png((9, 9, 9)), ["x"], {})
    del missing["png"]
    broken_json = encode_sample("bad_json", png((9, 9, 9)), ["x"], {})
    broken_json["json"] = b"{not json"
    return samples + [empty, missing, broken_json]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    """43 samples (37 good, 6 bad spread among them) in 4 shards, with meta.json."""
    out = tmp_path_factory.mktemp("shards")
    good, bad = [good_sample(i) for i in range(GOOD)], bad_samples()
    ordered = good[:5] + bad[:2] + good[5:20] + bad[2:4] + good[20:] + bad[4:]
    writer = SplitWriter(out, shard_size=12)
    for sample in ordered:
        writer.write("train", sample)
    write_meta(out, "synthetic", writer.close())
    return resolve_shards(str(out / "train-*.tar"))


def run(urls, **settings) -> list[dict]:
    args = dict(batch_size=4, image_size=8, epoch=0, seed=0, rank=0, world_size=1, workers=0, batches_per_epoch=7,
                shuffle_buffer=16)
    return list(make_train_loader(urls, **{**args, **settings}))


def keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def test_bad_samples_are_skipped_and_counted_while_good_ones_come_through(shards):
    raw_usable = GOOD + sum(DECODE_FAILURES.values())  # 40 = one pass in batches of 8
    loader = make_train_loader(shards, batch_size=8, image_size=8, epoch=0, seed=0, rank=0, world_size=1, workers=0,
                               batches_per_epoch=raw_usable // 8, shuffle_buffer=100)
    batches = list(loader)
    assert len(loader) == len(batches) == 5
    assert all(b["image"].shape == (8, 3, 8, 8) and len(b["caption"]) == 8 for b in batches)
    assert set(keys(batches)) == {f"good{i:03d}" for i in range(GOOD)}
    assert all(c in (f"caption {k[4:].lstrip('0') or '0'}", f"phrasing {k[4:].lstrip('0') or '0'}")
               for b in batches for c, k in zip(b["caption"], b["key"]))
    per_batch = sum((Counter(b["skipped"]) for b in batches), Counter())
    assert per_batch == Counter(DECODE_FAILURES) + Counter(FIELD_FAILURES) == loader.skipped


def test_the_stream_is_reproducible_and_changes_with_the_epoch(shards):
    first, again = run(shards, workers=2), run(shards, workers=2)
    assert keys(first) == keys(again)
    assert all(torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"] for a, b in zip(first, again))
    assert keys(run(shards, workers=2, epoch=1)) != keys(first)
    assert keys(run(shards, workers=0)) == keys(run(shards, workers=1))


def test_skip_batches_resumes_the_exact_stream(shards):
    fresh = run(shards, workers=2)
    for skip in (1, 2, 3, 6, 7):
        resumed = run(shards, workers=2, skip_batches=skip)
        assert keys(resumed) == keys(fresh[skip:]), skip
        assert all(torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"] and
                   a["skipped"] == b["skipped"] for a, b in zip(resumed, fresh[skip:]))


def test_skipped_batches_are_not_decoded(shards, monkeypatch):
    import mmtool.data.reading.loader as loader_module

    decoded = []
    real_open_image = loader_module.open_image
    monkeypatch.setattr(loader_module, "open_image", lambda data: decoded.append(1) or real_open_image(data))
    run(shards, skip_batches=5)
    assert len(decoded) == (7 - 5) * 4


def test_augmentation_and_caption_depend_on_the_sample_not_its_position(shards):
    batches = run(shards, batch_size=1, batches_per_epoch=40, shuffle_buffer=1)
    other_order = run(shards, batch_size=1, batches_per_epoch=40, shuffle_buffer=50)
    first = {b["key"][0]: (b["image"], b["caption"][0]) for b in batches}
    for b in other_order:
        image, caption = first[b["key"][0]]
        assert torch.equal(image, b["image"]) and caption == b["caption"][0]


@pytest.mark.parametrize("shard_count", [4, 1])  # 1 shard for 2 ranks x 2 workers: its samples are split
def test_every_rank_yields_the_same_number_of_batches(shards, shard_count):
    per_rank = [run(shards[:shard_count], world_size=2, rank=rank, workers=2, batches_per_epoch=5)
                for rank in range(2)]
    assert [len(batches) for batches in per_rank] == [5, 5]
    if shard_count == 4:  # 10 samples per (rank, worker): the first batch of each comes from disjoint shares
        assert not set(keys(per_rank[0][:2])) & set(keys(per_rank[1][:2]))


def test_resampled_draws_shards_reproducibly(shards):
    batches = run(shards, resampled=True, batches_per_epoch=9, workers=2)
    assert len(batches) == 9 and keys(batches) == keys(run(shards, resampled=True, batches_per_epoch=9, workers=2))


@pytest.mark.parametrize("bad, message", [(slice(3, None), "no usable sample"), (slice(0, 3), "no decodable image")])
def test_shards_without_a_usable_sample_raise(tmp_path, bad, message):
    writer = SplitWriter(tmp_path, shard_size=10)
    for sample in bad_samples()[bad]:
        writer.write("train", sample)
    writer.close()
    with pytest.raises(MmtoolError, match=message):
        run(resolve_shards(str(tmp_path / "*.tar")))


def test_a_batch_of_only_unreadable_images_gets_a_stand_in(shards):
    batches = run(shards, batch_size=1, batches_per_epoch=40, shuffle_buffer=1)
    assert len(batches) == 40 and all(k.startswith("good") for k in keys(batches))
    counted = sum((Counter(b["skipped"]) for b in batches), Counter())
    assert all(counted[reason] == n for reason, n in DECODE_FAILURES.items())  # 40 batches decode one whole pass
    assert keys(run(shards, batch_size=1, batches_per_epoch=40, shuffle_buffer=1, skip_batches=9)) == keys(batches[9:])


def test_eval_set_holds_every_good_sample_with_canonical_captions_and_labels(shards):
    eval_set = make_eval_set(shards, 8, label_fields=("group", "subgroup", "absent"))
    assert eval_set["image"].shape == (GOOD, 3, 8, 8)
    assert eval_set["key"] == [f"good{i:03d}" for i in range(GOOD)]
    assert eval_set["caption"] == [f"caption {i}" for i in range(GOOD)]
    assert set(eval_set["labels"]) == {"group", "subgroup"}
    assert eval_set["labels"]["group"][:4] == ["g0", "g1", "g2", "g0"]
    assert Counter(eval_set["skipped"]) == Counter(DECODE_FAILURES) + Counter(FIELD_FAILURES)


def test_an_eval_set_of_crops_holds_the_pixels_the_tensors_normalise(shards):
    """Style views read the crops: the crop form holds no tensors, and each crop normalises to the tensor form's."""
    tensors, crops = make_eval_set(shards, 8), make_eval_set(shards, 8, as_crops=True)
    assert "image" not in crops and "crop" not in tensors
    assert {k: v for k, v in crops.items() if k != "crop"} == {k: v for k, v in tensors.items() if k != "image"}
    assert torch.equal(torch.stack([to_normalized_tensor(crop) for crop in crops["crop"]]), tensors["image"])


def test_img2dataset_style_samples_read_their_txt_as_the_caption(tmp_path):
    with wds.TarWriter(str(tmp_path / "00000.tar")) as tar:
        for i in range(3):
            jpeg = io.BytesIO()
            Image.new("RGB", (12, 12), (i * 80, 0, 0)).save(jpeg, "JPEG")
            tar.write({"__key__": f"{i:09d}", "jpg": jpeg.getvalue(), "txt": f"a photo {i}",
                       "json": json.dumps({"url": "http://x", "width": 12}).encode()})
    (tmp_path / "00000_stats.json").write_text(json.dumps({"successes": 3}))
    urls = resolve_shards(str(tmp_path / "{00000..00000}.tar"))
    assert sample_count(urls) == 3
    eval_set = make_eval_set(urls, 8)
    assert eval_set["caption"] == ["a photo 0", "a photo 1", "a photo 2"] and eval_set["labels"] == {}
    assert run(urls, batch_size=3, batches_per_epoch=1)[0]["meta"][0]["url"] == "http://x"


def test_resolve_shards_and_sample_count(shards, tmp_path):
    folder = Path(shards[0]).parent
    assert resolve_shards(str(folder / "train-{000000..000001}.tar")) == shards[:2]
    assert resolve_shards([shards[0], str(folder / "train-00000[23].tar")]) == [shards[0]] + shards[2:]
    assert sample_count(shards) == GOOD + len(bad_samples())  # from meta.json
    with pytest.raises(MmtoolError, match="nothing-here"):
        resolve_shards(str(tmp_path / "nothing-here-*.tar"))
    with pytest.raises(MmtoolError, match="missing.tar"):
        resolve_shards(str(tmp_path / "missing.tar"))
    copy = tmp_path / "copy-000000.tar"
    copy.write_bytes(Path(shards[0]).read_bytes())
    assert not (tmp_path / META_FILE).exists() and sample_count([str(copy)]) == 12  # by listing the tar


def test_pipe_and_file_urls_read_the_same_samples_as_plain_paths(shards, tmp_path):
    folder = Path(shards[0]).parent
    piped = resolve_shards(f"pipe:cat {folder}/train-{{000000..000003}}.tar")  # brace-expanded, not checked
    assert piped == [f"pipe:cat {s}" for s in shards]
    file_urls = resolve_shards([Path(s).as_uri() for s in shards])
    plain = [(s.key, s.image, s.captions, s.meta) for s in parsed_samples(shards, Counter())]
    for urls in (piped, file_urls):
        skipped = Counter()
        assert [(s.key, s.image, s.captions, s.meta) for s in parsed_samples(urls, skipped)] == plain
        assert skipped == Counter(FIELD_FAILURES)
        assert sample_count(urls) == GOOD + len(bad_samples())  # from the meta.json beside them
        batches = run(urls)
        assert all(torch.equal(a["image"], b["image"]) and a["key"] == b["key"] for a, b in zip(batches, run(shards)))
    copy = tmp_path / "copy-000000.tar"
    copy.write_bytes(Path(shards[0]).read_bytes())
    with pytest.raises(MmtoolError, match="set data.train_samples"):
        sample_count([f"pipe:cat {copy}"])
    with pytest.raises(MmtoolError, match="pipe:aws s3 cp"):
        resolve_shards("s3://bucket/train-{000000..000003}.tar")


def test_a_broken_shard_counts_once_and_keeps_the_samples_before_the_break(shards, tmp_path):
    whole = [group["__key__"] for group in iter_tar_groups(shards[0], Counter())]
    with tarfile.open(shards[0]) as tar:
        sixth = [m for m in tar.getmembers() if m.name.startswith(whole[5] + ".")]
    data = Path(shards[0]).read_bytes()
    for member in (sixth[0], sixth[-1]):  # cut inside the sixth sample's first and last member
        cut = tmp_path / "cut.tar"
        cut.write_bytes(data[:member.offset_data + member.size // 2])
        for url in (str(cut), f"pipe:cat {cut}"):
            skipped = Counter()
            assert [group["__key__"] for group in iter_tar_groups(url, skipped)] == whole[:5], (member.name, url)
            assert skipped == {"bad_shard": 1}
    (tmp_path / "junk.tar").write_bytes(b"not a tar file" * 100)
    for url in (str(tmp_path / "junk.tar"), str(tmp_path / "missing.tar"), f"pipe:cat {tmp_path}/missing.tar"):
        skipped = Counter()
        assert list(iter_tar_groups(url, skipped)) == [] and skipped == {"bad_shard": 1}, url
