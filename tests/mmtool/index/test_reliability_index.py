"""The image index survives a crash at any point of a save, writes thumbnails whole, saves `index add` every N
images, and lets only one writer in at a time (issue 16, finding 4)."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.errors import MmtoolError
from mmtool.index import ImageIndex
from mmtool.index import embed as embed_module
from mmtool.index.writer_lock import exclusive_writer

pytestmark = pytest.mark.faults


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing catches it on the way out."""


@pytest.fixture(scope="module")
def image_folders(emoji_shards, tmp_path_factory):
    """Two folders of distinct val emoji PNGs: 6 to build with, 10 to add."""
    root = tmp_path_factory.mktemp("index_images")
    first, second = root / "first", root / "second"
    first.mkdir(), second.mkdir()
    samples = zip(range(16), parsed_samples(resolve_shards(str(emoji_shards / "val-*.tar")), Counter()))
    for i, raw in samples:
        ((first if i < 6 else second) / f"{i:02d}.png").write_bytes(raw.image)
    return first, second


def build_small(image_folders, tiny_clip_checkpoint, out: Path) -> ImageIndex:
    index, _ = ImageIndex.build(str(image_folders[0]), tiny_clip_checkpoint, out, progress=False)
    return index


def test_a_crash_at_any_point_of_a_save_leaves_the_previous_or_the_new_index(image_folders, tiny_clip_checkpoint,
                                                                            tmp_path, monkeypatch):
    out = tmp_path / "index"
    build_small(image_folders, tiny_clip_checkpoint, out)
    real_replace, outcomes = os.replace, []
    for crash_at in range(1, 20):
        calls = []

        def replace_then_crash(src, dst):
            calls.append(dst)
            if len(calls) == crash_at:
                raise Crash()
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace_then_crash)
        try:
            ImageIndex.open(out).add(str(image_folders[1]), progress=False)
            finished = True
        except Crash:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        reopened = ImageIndex.open(out)  # never refused
        assert len(reopened.items) == reopened.vectors.ntotal
        outcomes.append(len(reopened.items))
        if finished:
            break
    assert outcomes[-1] == 16 and set(outcomes) <= {6, 16}, outcomes
    assert len(outcomes) >= 3  # the save has several steps, and a crash before each one was tried


def test_a_crash_while_writing_a_thumbnail_leaves_no_half_written_file(image_folders, tiny_clip_checkpoint, tmp_path,
                                                                     monkeypatch):
    real_save = Image.Image.save

    def write_half_then_crash(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\xff\xd8\xff half a jpeg")
        raise Crash()

    monkeypatch.setattr(Image.Image, "save", write_half_then_crash)
    with pytest.raises(Crash):
        build_small(image_folders, tiny_clip_checkpoint, tmp_path / "index")
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert list((tmp_path / "index" / "thumbs").glob("*.jpg")) == []
    index = build_small(image_folders, tiny_clip_checkpoint, tmp_path / "index")  # the interrupted build reruns
    thumbs = sorted((tmp_path / "index" / "thumbs").glob("*.jpg"))
    assert len(thumbs) == len(index.items) == 6
    for thumb in thumbs:
        Image.open(thumb).load()


def test_add_saves_every_n_images_so_a_crash_loses_at_most_n(image_folders, tiny_clip_checkpoint, tmp_path,
                                                              monkeypatch):
    out = tmp_path / "index"
    build_small(image_folders, tiny_clip_checkpoint, out)
    real_batches, seen = embed_module.encode_batch, []

    def crash_on_the_fourth_batch(encoder, pixels):
        seen.append(len(pixels))
        if len(seen) == 4:
            raise Crash()
        return real_batches(encoder, pixels)

    monkeypatch.setattr(embed_module, "encode_batch", crash_on_the_fourth_batch)
    with pytest.raises(Crash):
        ImageIndex.open(out).add(str(image_folders[1]), batch_size=2, save_every=4, progress=False)
    assert len(ImageIndex.open(out).items) == 6 + 4  # batches 1-2 saved; batch 3 waited for a 4th image
    monkeypatch.setattr(embed_module, "encode_batch", real_batches)
    report = ImageIndex.open(out).add(str(image_folders[1]), batch_size=2, save_every=4, progress=False)
    assert (report.added, report.duplicates) == (6, 4)  # the rerun continues where the crash left off
    assert len(ImageIndex.open(out).items) == 16


def test_a_second_writer_is_refused_in_one_line(image_folders, tiny_clip_checkpoint, tmp_path):
    out = tmp_path / "index"
    build_small(image_folders, tiny_clip_checkpoint, out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from mmtool.index.writer_lock import exclusive_writer\n"
         "with exclusive_writer(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MmtoolError, match=rf"^{out}: another mmtool index build/add \(pid {holder.pid}\) is "
                                              r"writing this index") as refused:
            ImageIndex.open(out).add(str(image_folders[1]), progress=False)
        assert "\n" not in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    assert len(ImageIndex.open(out).items) == 6
    with exclusive_writer(out):  # the dead holder's lock went with it
        pass


@pytest.mark.slow
def test_sigkill_during_index_add_then_rerun(image_folders, tiny_clip_checkpoint, tmp_path):
    """A real `mmtool index add` killed after its first incremental save: the index opens, and the rerun
    completes it."""
    out = tmp_path / "index"
    build_small(image_folders, tiny_clip_checkpoint, out)
    many = tmp_path / "many"
    many.mkdir()
    for path in sorted(image_folders[1].glob("*.png")):  # 10 distinct images, + 30 variants of them
        image = Image.open(path).convert("RGB")
        for shade in range(4):
            image.putpixel((0, 0), (shade * 60, 0, 0))
            image.save(many / f"{path.stem}_{shade}.png")
    command = [sys.executable, "-m", "mmtool", "index", "add", str(out), str(many), "--batch-size", "2",
               "--save-every", "2"]
    adder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while json.loads((out / "index.json").read_text())["count"] == 6 and adder.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    adder.send_signal(signal.SIGKILL)
    adder.wait()
    killed_at = len(ImageIndex.open(out).items)
    assert 6 < killed_at <= 46
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = ImageIndex.open(out)
    assert len(index.items) == index.vectors.ntotal == 46
    assert len({item["sha256"] for item in index.items}) == 46


def test_bad_jsonl_lines_are_reported_and_counted_not_fatal(image_folders, tiny_clip_checkpoint, tmp_path, capsys):
    image = sorted(image_folders[0].glob("*.png"))[0]
    good = json.dumps({"image": str(image), "caption": "fine"}).encode()
    (tmp_path / "list.jsonl").write_bytes(b"\n".join([b'{"image": "x.png", "caption": "caf\xe9"}', good, b"{oops"]))
    _, report = ImageIndex.build(str(tmp_path / "list.jsonl"), tiny_clip_checkpoint, tmp_path / "index",
                                 progress=False)
    assert report.added == 1 and report.skipped()["bad_line"] == 2
    errors = capsys.readouterr().err.splitlines()
    assert f"{tmp_path / 'list.jsonl'}:1: not UTF-8 text (byte 0xe9 at column 35)" in errors
    assert any(line.startswith(f"{tmp_path / 'list.jsonl'}:3: invalid JSON") for line in errors)


def test_a_writer_removes_what_a_killed_writer_left(image_folders, tiny_clip_checkpoint, tmp_path):
    out = tmp_path / "index"
    build_small(image_folders, tiny_clip_checkpoint, out)
    left = [out / ".index.json.k1ll3d.tmp", out / "thumbs" / f".{'0' * 64}.jpg.k1ll3d.tmp", out / "v000099"]
    left[0].write_text("{")
    left[1].write_bytes(b"\xff\xd8 half")
    left[2].mkdir()
    (left[2] / "vectors.faiss").write_bytes(b"half")
    ImageIndex.open(out).add(str(image_folders[1]), progress=False)
    assert not any(path.exists() for path in left)
    assert len(ImageIndex.open(out).items) == 16


def test_readers_opening_during_saves_always_get_a_whole_index(image_folders, tiny_clip_checkpoint, tmp_path):
    """open() while a writer commits version after version (and removes the old ones): always a consistent index,
    never an error, and never an older one than the reader saw before."""
    import threading

    out = tmp_path / "index"
    build_small(image_folders, tiny_clip_checkpoint, out)
    writer = threading.Thread(target=lambda: ImageIndex.open(out).add(str(image_folders[1]), batch_size=1,
                                                                      save_every=1, progress=False))
    seen, errors = [], []
    writer.start()
    while writer.is_alive():
        try:
            index = ImageIndex.open(out)
            assert len(index.items) == index.vectors.ntotal
            seen.append(len(index.items))
        except Exception as err:  # noqa: BLE001 -- collected: the assertion below names it
            errors.append(repr(err))
    writer.join()
    assert not errors and seen == sorted(seen) and len(ImageIndex.open(out).items) == 16, (errors, seen)
