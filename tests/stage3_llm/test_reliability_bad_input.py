"""Stage 3's readers under bad input: a conversation whose image cannot be decoded is skipped and counted, never
fatal; non-UTF-8 or malformed files are refused in one line naming the file and the line (issue 16, finding 7)."""
import json
from collections import Counter

import pytest

from mmtool.data.reading.images import eval_transform
from mmtool.errors import MmtoolError
from stage3_llm.conversations import ConversationDataset, read_conversations, readable_items, training_items
from tests.stage3_llm.test_finetune import parts  # noqa: F401 (the tiny VLM fixture)
from tests.helpers.emoji import png
from tests.helpers.tiny_llm import word_tokenizer
from tests.stage3_llm.test_conversations import WORDS, record, write

pytestmark = pytest.mark.faults


@pytest.fixture
def dataset(tmp_path):
    """Conversations 0 and 2 have a good image, 1 a corrupt one, 3 a truncated one, 4 a zero-byte one."""
    (tmp_path / "red.png").write_bytes(png((255, 0, 0)))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "cut.png").write_bytes(png((0, 255, 0))[:40])
    (tmp_path / "empty.png").write_bytes(b"")
    names = ["red.png", "corrupt.png", "red.png", "cut.png", "empty.png"]
    conversations, source = read_conversations(write(tmp_path / "d.json", [record(name) for name in names]))
    return ConversationDataset(conversations, source, word_tokenizer(WORDS), "<image>", 4,
                               lambda image: eval_transform(image, 8))


def test_a_batch_keeps_its_size_with_copies_of_its_good_conversations(dataset):
    skipped = Counter()
    items = training_items(dataset, [0, 1, 3], skipped)
    assert len(items) == 3 and all(item["pixel_values"] is not None for item in items)
    assert skipped == Counter(unreadable_image=2)


def test_a_batch_with_no_good_image_takes_the_next_good_conversation(dataset):
    skipped = Counter()
    items = training_items(dataset, [3, 4], skipped)
    assert [item["input_ids"] for item in items] == [dataset[0]["input_ids"]] * 2  # after 4 comes 0 (wraps)
    assert sum(skipped.values()) == 2


def test_evaluation_leaves_unreadable_conversations_out(dataset):
    skipped = Counter()
    assert len(readable_items(dataset, list(range(5)), skipped)) == 2 and sum(skipped.values()) == 3


def test_non_utf8_conversation_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "red.png").write_bytes(png((255, 0, 0)))
    good = json.dumps(record("red.png"))
    (tmp_path / "latin1.jsonl").write_bytes(good.encode() + b"\n" + good.encode().replace(b"what", b"wh\xe9t") + b"\n")
    with pytest.raises(MmtoolError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at column \d+\)$") as refused:
        read_conversations(tmp_path / "latin1.jsonl")
    assert "\n" not in str(refused.value)
    (tmp_path / "latin1.json").write_bytes(b"[" + good.encode().replace(b"what", b"wh\xe9t") + b"]")
    with pytest.raises(MmtoolError, match=r"latin1\.json: not UTF-8 text \(byte 0xe9 at offset \d+\)$"):
        read_conversations(tmp_path / "latin1.json")


def test_a_malformed_jsonl_line_is_named_by_its_number(tmp_path):
    (tmp_path / "red.png").write_bytes(png((255, 0, 0)))
    good = json.dumps(record("red.png"))
    (tmp_path / "d.jsonl").write_text(f"{good}\n\n{good[:30]}\n")
    with pytest.raises(MmtoolError, match=r"d\.jsonl:3: invalid JSON \("):
        read_conversations(tmp_path / "d.jsonl")


@pytest.mark.slow
def test_finetune_runs_through_corrupt_images_and_counts_them(parts, tmp_path, capsys):  # noqa: F811 (the imported fixture)
    """A tiny stage-3 run whose train.json points at 2 corrupt images: it finishes and ends with the count."""
    import shutil

    from stage3_llm.train import finetune
    from tests.stage3_llm.test_finetune import config

    data = tmp_path / "instruct"
    shutil.copytree(parts / "instruct", data)
    records = json.loads((data / "train.json").read_text())
    records = records[:len(records) - len(records) % 5]  # whole batches of 5: one epoch reads every record
    (data / "train.json").write_text(json.dumps(records))
    corrupt = sorted({r["image"] for r in records if r.get("image")})[:2]
    for name in corrupt:
        (data / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    uses = sum(r.get("image") in corrupt for r in records)
    finetune(config(parts, "train.epochs=1", f"data.train={data / 'train.json'}", f"data.val={data / 'train.json'}"),
             tmp_path / "ft")
    assert (tmp_path / "ft" / "vlm.pt").is_file()
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped "))
    assert summary.endswith(f"{uses} unreadable image") and summary.startswith(f"skipped {uses} of "), summary
    val = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "val"]
    assert val[-1]["conversations"] == len(records) - uses and val[-1]["skipped_conversations"] == uses
