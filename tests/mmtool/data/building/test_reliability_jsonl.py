"""`mmtool data from-jsonl` reports every bad line as file:line: reason, writes the good ones, and fails only when
no line was usable (issue 16, finding 7)."""
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mmtool.cli import app
from tests.helpers.emoji import png

pytestmark = pytest.mark.faults

BAD_LINES = [
    (b'{"image": "a.png", "caption": ', "invalid JSON"),
    (b'{"caption": "no image"}', 'missing "image"'),
    (b'{"image": "a.png", "caption": "  "}', "empty caption"),
    (b'["a", "list"]', "expected a JSON object"),
    ('{"image": "a.png", "caption": "caf\u00e9"}'.encode("latin-1"), "not UTF-8 text (byte 0xe9 at column 35)"),
    (b'{"image": "a.png", "caption": "x", "split": "../etc"}', '"split" must be a plain name'),
]


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_every_bad_line_is_reported_and_the_good_ones_written(tmp_path):
    (tmp_path / "a.png").write_bytes(png((10, 20, 30)))
    good = json.dumps({"image": "a.png", "caption": "a good one"}).encode()
    missing_image = json.dumps({"image": "gone.png", "caption": "c"}).encode()
    lines = [good, *[line for line, _ in BAD_LINES], b"", good, missing_image]
    (tmp_path / "pairs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = invoke("data", "from-jsonl", tmp_path / "pairs.jsonl", "--out", tmp_path / "shards")
    assert result.exit_code == 0, result.output
    reported = [line for line in result.stderr.splitlines() if line.startswith(str(tmp_path / "pairs.jsonl"))]
    assert len(reported) == len(BAD_LINES)
    for (_, reason), line, number in zip(BAD_LINES, reported, range(2, 2 + len(BAD_LINES))):
        assert line.startswith(f"{tmp_path / 'pairs.jsonl'}:{number}: ") and reason in line, line
    assert json.loads(result.stdout)["samples"] == {"train": 2}
    assert result.stderr.strip().splitlines()[-1] == "skipped 7 of 9 samples: 6 bad line, 1 missing image"


def test_a_file_with_no_good_line_fails_in_one_line(tmp_path):
    (tmp_path / "pairs.jsonl").write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    done = subprocess.run([sys.executable, "-m", "mmtool", "data", "from-jsonl", tmp_path / "pairs.jsonl", "--out",
                           tmp_path / "shards"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == \
        f"mmtool: error: {tmp_path / 'pairs.jsonl'}: no usable image-caption pair (skipped: {{'bad_line': 6}})"
    assert len(done.stderr.strip().splitlines()) == len(BAD_LINES) + 1
