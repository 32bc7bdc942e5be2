"""A corrupt meta.json (or img2dataset *_stats.json) beside the shards is refused in one line naming the file and
the key, instead of a traceback (issue 16, finding 7)."""
import json

import pytest

from mmtool.data.reading.shard_reader import member_keys, sample_count
from mmtool.errors import MmtoolError
from tests.helpers.emoji import write_emoji_shards

pytestmark = pytest.mark.faults


@pytest.fixture
def shards(tmp_path):
    """Hand-made emoji shards and a good meta.json listing the train shards' counts."""
    folder = write_emoji_shards(tmp_path / "shards")
    names = sorted(path.name for path in folder.glob("train-*.tar"))
    counts = [len(member_keys(str(folder / name))) for name in names]
    (folder / "meta.json").write_text(json.dumps({"splits": {"train": {"samples": sum(counts), "shards": names,
                                                                       "shard_samples": counts}}}))
    return folder


@pytest.mark.parametrize("content, message", [
    (b"{not json", r"meta\.json: not valid JSON \("),
    (b'{"splits": {"train": {"shards": ["caf\xe9"]}}}', r"meta\.json: not UTF-8 text \(byte 0xe9 at offset \d+\)"),
    (b'["a", "list"]', r"meta\.json: expected a JSON object, got list"),
    (b'{"splits": ["train"]}', r"meta\.json: key 'splits': expected an object of splits, got list"),
    (b'{"splits": {"train": {"shards": ["train-000000.tar"], "shard_samples": ["three"]}}}',
     r"meta\.json: key 'splits.train.shard_samples': expected a list of sample counts, got \['three'\]"),
    (b'{"splits": {"train": 7}}', r"meta\.json: key 'splits.train': expected an object, got 7"),
])
def test_a_corrupt_meta_json_is_refused_in_one_line(shards, content, message):
    (shards / "meta.json").write_bytes(content)
    with pytest.raises(MmtoolError, match=message) as refused:
        sample_count(str(shards / "train-*.tar"))
    assert "\n" not in str(refused.value) and str(shards / "meta.json") in str(refused.value)


def test_a_corrupt_img2dataset_stats_file_is_refused_in_one_line(shards):
    (shards / "meta.json").unlink()
    (shards / "train-000000_stats.json").write_text('{"successes": "many"}')
    with pytest.raises(MmtoolError, match=r"train-000000_stats\.json: key 'successes': expected a sample count, "
                                          r"got 'many'"):
        sample_count(str(shards / "train-*.tar"))


def test_a_good_meta_json_still_counts(shards):
    meta = json.loads((shards / "meta.json").read_text())
    assert sample_count(str(shards / "train-*.tar")) == meta["splits"]["train"]["samples"]
