"""Stage 3 reading its images from shards (`data.image_shards`): a sample without a usable image is skipped and
counted when a conversation uses it, as stage 1 and the LLaVA JSON path do, not a refusal of the whole run; a bad
caption does not matter (only the image is used); a key lost with a shard cut short counts as `bad_shard`
(issue 16)."""
import json
from collections import Counter

import pytest

from mmtool.data.building.shard_writer import SplitWriter
from mmtool.data.reading.images import eval_transform
from mmtool.data.reading.sample_format import encode_sample
from mmtool.errors import MmtoolError
from stage3_llm.conversations import ConversationDataset, read_conversations, readable_items, training_items
from tests.helpers.emoji import png
from tests.helpers.tiny_llm import word_tokenizer
from tests.stage3_llm.test_conversations import WORDS, record, write

pytestmark = pytest.mark.faults


def sample(key: str, image: bytes | None = None, **members) -> dict:
    encoded = encode_sample(key, png((200, 30, 30)) if image is None else image, ["a red square"], {})
    encoded.update(members)
    return {name: value for name, value in encoded.items() if value is not None}


CASES = {  # key -> (shard members, what reading its image gives: "read" or the skip reason)
    "good": (sample("good"), "read"),
    "garbage_image": (sample("garbage_image", b"\x89PNG\r\n\x1a\n not really"), "unreadable_image"),
    "zero_byte_image": (sample("zero_byte_image", b""), "missing_image"),
    "no_image": (sample("no_image", png=None), "missing_image"),
    "empty_caption": (sample("empty_caption", txt=b"", json=json.dumps({"captions": [""]}).encode()), "read"),
    "bad_json": (sample("bad_json", json=b"[1, 2]"), "read"),
}


@pytest.fixture
def shards(tmp_path):
    """train-000000.tar holding every case, and cut-000000.tar cut mid-way through its 8 samples."""
    with SplitWriter(tmp_path, shard_size=8) as writer:
        for members, _ in CASES.values():
            writer.write("train", members)
        for index in range(8):
            writer.write("cut", sample(f"cut_{index}"))
    cut = tmp_path / "cut-000000.tar"
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2 + 100])
    return tmp_path


def dataset(shards, keys: list[str], spec: str = "*.tar") -> ConversationDataset:
    conversations, source = read_conversations(write(shards / "d.json", [record(key) for key in keys]),
                                               image_shards=str(shards / spec))
    return ConversationDataset(conversations, source, word_tokenizer(WORDS), "<image>", 4,
                               lambda image: eval_transform(image, 8))


def test_a_sample_without_a_usable_image_is_skipped_and_counted_not_refused(shards):
    data, skipped = dataset(shards, [*CASES, "cut_0", "cut_7"]), Counter()  # cut_0 before the cut, cut_7 after
    items = readable_items(data, list(range(len(data))), skipped)
    readable = [key for key, (_, outcome) in CASES.items() if outcome == "read"] + ["cut_0"]
    assert len(items) == len(readable) and all(item["pixel_values"] is not None for item in items)
    expected = Counter(outcome for _, outcome in CASES.values() if outcome != "read") + Counter(bad_shard=1)
    assert skipped == expected


def test_a_training_batch_keeps_its_size(shards):
    data, skipped = dataset(shards, list(CASES)), Counter()
    assert len(training_items(data, [1, 2, 0, 3], skipped)) == 4
    assert skipped == Counter(unreadable_image=1, missing_image=2)


def test_a_key_whole_shards_never_held_is_still_refused(shards):
    with pytest.raises(MmtoolError, match=r"d\.json#0: image 'nope' not found \(the image shards\)"):
        dataset(shards, ["nope"], spec="train-000000.tar")
