"""Issue 16, finding 9: every command that reads data ends by saying how many samples it skipped, and why."""
import json
import re
from collections import Counter

import pytest
from typer.testing import CliRunner

from mmtool.cli import app
from mmtool.data.building.shard_writer import SplitWriter, write_meta
from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.skips import skip_summary
from tests.mmtool.data.reading.test_loader import GOOD, bad_samples, good_sample, png
from tests.stage1_clip.test_train_e2e import TINY, mmtool

pytestmark = pytest.mark.faults

# tests/mmtool/data/reading/test_loader.py's bad samples: two unreadable images, a bomb, an empty caption, a missing
# image, bad JSON.
BAD_SHARD_LINE = ("skipped 6 of 43 samples: 2 unreadable image, 1 bad json, 1 bomb, 1 empty caption, "
                  "1 missing image")


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    """43 samples (37 good, 6 bad) in 4 shards, with meta.json."""
    out = tmp_path_factory.mktemp("bad_shards")
    writer = SplitWriter(out, shard_size=12)
    for sample in [good_sample(i) for i in range(GOOD)] + bad_samples():
        writer.write("val", sample)
    write_meta(out, "synthetic", writer.close())
    return out


def invoke(*args):
    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_the_summary_names_each_reason_most_frequent_first():
    assert skip_summary(Counter(empty_caption=16, unreadable_image=20), 216) == \
        "skipped 36 of 216 samples: 20 unreadable image, 16 empty caption"
    assert skip_summary({}, 5) == "skipped 0 of 5 samples"


def test_eval_clip_reports_its_skips(bad_shards, tiny_clip_checkpoint):
    result = invoke("eval-clip", tiny_clip_checkpoint, "--data", f"{bad_shards}/val-*.tar")
    assert result.stderr.strip().splitlines()[-1] == BAD_SHARD_LINE


def test_index_build_and_add_report_their_skips(bad_shards, tiny_clip_checkpoint, tmp_path):
    built = invoke("index", "build", f"{bad_shards}/val-*.tar", "--model", tiny_clip_checkpoint, "--out",
                   tmp_path / "index")
    assert built.stderr.strip().splitlines()[-1] == BAD_SHARD_LINE
    assert json.loads(built.stdout.strip().splitlines()[-1]) == {"added": GOOD, "duplicates": 0, "unreadable": 3}
    added = invoke("index", "add", tmp_path / "index", f"{bad_shards}/val-*.tar")
    assert added.stderr.strip().splitlines()[-1] == \
        "skipped 43 of 43 samples: 37 duplicate, 2 unreadable image, 1 bad json, 1 bomb, 1 empty caption, " \
        "1 missing image"


def test_data_from_jsonl_reports_its_skips(tmp_path):
    (tmp_path / "a.png").write_bytes(png((10, 20, 30)))
    (tmp_path / "b.png").write_bytes(b"junk")
    lines = [{"image": "a.png", "caption": "a"}, {"image": "b.png", "caption": "b"}, {"image": "c.png", "caption": "c"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = invoke("data", "from-jsonl", tmp_path / "pairs.jsonl", "--out", tmp_path / "shards")
    assert result.stderr.strip().splitlines()[-1] == "skipped 2 of 3 samples: 1 missing image, 1 unreadable image"


@pytest.mark.slow
def test_pretrain_clip_reports_its_skips(emoji_shards, bad_shards, tmp_path):
    """The emoji train shards plus the bad ones, one epoch: the run ends with the line, counted over every batch."""
    data = tmp_path / "data"
    data.mkdir()
    urls = resolve_shards(f"{emoji_shards}/train-*.tar") + resolve_shards(f"{bad_shards}/val-*.tar")
    for i, url in enumerate(urls):
        (data / f"train-{i:06d}.tar").symlink_to(url)
    sets = [f"data.train={data}/train-*.tar", "data.train_samples=560", "data.val=null", "data.batch_size=32",
            "train.epochs=1", *TINY]
    done = mmtool("pretrain-clip", "--config", "configs/clip/tiny_vit.yaml", "--out", tmp_path / "run",
                  *[arg for item in sets for arg in ("--set", item)])
    line = next(line for line in done.stdout.splitlines() if line.startswith("skipped "))
    match = re.fullmatch(r"skipped (\d+) of (\d+) samples: (.*)", line)
    assert match and 0 < int(match[1]) <= 6 and int(match[2]) == 17 * 32 + int(match[1]), line
    reasons = {part.split(" ", 1)[1] for part in match[3].split(", ")}
    assert reasons <= {"unreadable image", "bad json", "bomb", "empty caption", "missing image"}
