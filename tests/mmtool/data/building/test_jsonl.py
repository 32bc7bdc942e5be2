"""Building shards from a JSONL list of image-caption pairs."""
import io
import json
from collections import Counter

import pytest
from PIL import Image

from mmtool.data.building.jsonl import build_from_jsonl
from mmtool.data.reading.loader import make_eval_set, resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.errors import MmtoolError


def write_jsonl(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


@pytest.fixture
def pairs(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGBA", (30, 20), (255, 0, 0, 255)).save(tmp_path / "img" / "red.png")
    Image.new("RGB", (300, 200), (0, 0, 255)).save(tmp_path / "img" / "blue.jpg")
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    return tmp_path


def test_round_trip_keeps_captions_labels_and_counts_skips(pairs):
    write_jsonl(pairs / "pairs.jsonl", [
        {"image": "img/red.png", "caption": "a red square", "label": "red", "split": "val"},
        "",
        {"image": "img/blue.jpg", "captions": ["a blue rectangle", "blue"], "label": "blue", "source": "me"},
        {"image": "img/gone.png", "caption": "missing file"},
        {"image": "img/broken.png", "caption": "undecodable"},
    ])
    stats = build_from_jsonl(pairs / "pairs.jsonl", pairs / "out", image_size=64)
    assert stats["samples"] == {"train": 1, "val": 1}
    assert stats["skipped"] == {"missing_image": 1, "unreadable_image": 1}
    train = list(parsed_samples(resolve_shards(str(pairs / "out" / "train-*.tar")), Counter()))
    assert train[0].captions == ["a blue rectangle", "blue"]
    assert train[0].meta["label"] == "blue" and train[0].meta["source"] == "me"
    assert Image.open(io.BytesIO(train[0].image)).size == (96, 64)  # shorter side -> 64
    eval_set = make_eval_set(resolve_shards(str(pairs / "out" / "val-*.tar")), 16, label_fields=("label",))
    assert eval_set["caption"] == ["a red square"] and eval_set["labels"] == {"label": ["red"]}
    assert json.loads((pairs / "out" / "meta.json").read_text())["splits"]["val"]["samples"] == 1


@pytest.mark.parametrize("bad_line, message", [
    ('{"image": "img/red.png", "caption": ', "pairs.jsonl:2: invalid JSON"),
    ('{"caption": "no image"}', "pairs.jsonl:2: missing \"image\""),
    ('{"image": "img/red.png", "caption": "  "}', "pairs.jsonl:2: empty caption"),
    ('["a", "list"]', "pairs.jsonl:2: expected a JSON object"),
])
def test_malformed_lines_name_the_file_and_line(pairs, bad_line, message, capsys):
    write_jsonl(pairs / "pairs.jsonl", [{"image": "img/red.png", "caption": "fine"}, bad_line])
    stats = build_from_jsonl(pairs / "pairs.jsonl", pairs / "out")
    assert message in capsys.readouterr().err
    assert stats["samples"] == {"train": 1} and stats["skipped"] == {"bad_line": 1}


def test_no_usable_line_is_an_error_and_leaves_no_shard(pairs):
    write_jsonl(pairs / "pairs.jsonl", ['{"caption": "no image"}', {"image": "img/broken.png", "caption": "x"}])
    with pytest.raises(MmtoolError, match="no usable image-caption pair"):
        build_from_jsonl(pairs / "pairs.jsonl", pairs / "out")
    assert not list((pairs / "out").glob("*.tar"))
