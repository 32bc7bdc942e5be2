"""metrics.jsonl stays one JSON record per line across a crash: a line the crash cut short (no newline) is dropped
when the resumed run opens the log, instead of being glued to the next record (issue 16)."""
import json

import pytest

from mmtool.run_log import RunLog

pytestmark = pytest.mark.faults


def test_a_cut_last_line_is_dropped_when_a_resumed_run_appends(tmp_path):
    whole = json.dumps({"step": 1, "split": "train", "loss": 2.0})
    (tmp_path / "metrics.jsonl").write_text(whole + "\n" + '{"step": 2, "split": "tra')
    log = RunLog(tmp_path, total_steps=3, initial_step=1)
    log.write(2, "train", {"loss": 1.5})
    log.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 2.0), (2, 1.5)]
