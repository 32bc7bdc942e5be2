"""LLaVA conversation files: validation errors name file and record, image sources, dataset and collate."""
import json

import pytest

from mmtool.data.reading.images import eval_transform
from mmtool.errors import MmtoolError
from stage2_projector.chat_format import IGNORE_INDEX, encode_conversation
from stage3_llm.conversations import ConversationDataset, collate_conversations, read_conversations
from tests.helpers.emoji import png, write_emoji_shards
from tests.helpers.tiny_llm import word_tokenizer

WORDS = ["what", "is", "this", "a", "cat", "red", "?", "yes", "no", "it", ".", "hello"]


def record(image="red.png", *turns):
    turns = turns or ("<image>\nwhat is this ?", "a cat .")
    return {"id": "r", **({"image": image} if image else {}),
            "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]}


def write(path, records, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records))
    return path


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "red.png").write_bytes(png((255, 0, 0)))
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "blue.png").write_bytes(png((0, 0, 255)))
    return tmp_path


def test_dataset_and_collate(folder):
    records = [record("red.png", "<image>\nwhat is this ?", "a cat .", "is it red ?", "yes ."),
               record(None, "hello", "hello ."), record("red.png")]
    conversations, source = read_conversations(write(folder / "d.jsonl", records, jsonl=True))
    tokenizer = word_tokenizer(WORDS)
    dataset = ConversationDataset(conversations, source, tokenizer, "<image>", 4, lambda img: eval_transform(img, 8))
    batch = collate_conversations([dataset[i] for i in range(3)], pad_id=tokenizer.pad_token_id)
    lengths = [len(dataset.encoded[i][0]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["pixel_values"].shape == (2, 3, 8, 8)  # the text-only sample adds no image
    # red image, CLIP-normalised: the red channel is (1 - mean) / std
    assert batch["pixel_values"][0, 0, 0, 0].item() == pytest.approx((1 - 0.48145466) / 0.26862954, rel=1e-5)
    for row, (ids, labels) in enumerate(dataset.encoded):
        assert (ids, labels) == encode_conversation(tokenizer, conversations[row].turns, "<image>", 4)
        assert batch["input_ids"][row, :len(ids)].tolist() == ids
        assert batch["labels"][row, :len(ids)].tolist() == labels
        assert (batch["labels"][row, len(ids):] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, len(ids):] == tokenizer.pad_token_id).all()
    assert (batch["input_ids"] == 4).sum().item() == 8  # two images x 4 placeholders


def test_image_folder_and_shards(folder):
    conversations, source = read_conversations(write(folder / "d.json", [record("blue.png")]),
                                               image_folder=folder / "imgs")
    assert source.read(conversations[0].image) == (folder / "imgs" / "blue.png").read_bytes()
    shards = write_emoji_shards(folder / "shards")
    conversations, source = read_conversations(write(folder / "s.json", [record("noto_1f431")]),
                                               image_shards=f"{shards}/val-*.tar")
    dataset = ConversationDataset(conversations, source, word_tokenizer(WORDS), "<image>", 1,
                                  lambda img: eval_transform(img, 8))
    assert dataset[0]["pixel_values"].shape == (3, 8, 8)
    with pytest.raises(MmtoolError, match=r"s2\.json#0: image 'noto_9999' not found \(the image shards\)"):
        read_conversations(write(folder / "s2.json", [record("noto_9999")]), image_shards=f"{shards}/val-*.tar")


@pytest.mark.parametrize("bad, message", [
    (record("red.png", "what is this ?", "a cat ."), r"0 <image> markers but the record has image 'red.png'"),
    (record(None), r"1 <image> markers but the record has no image"),
    (record("red.png", "<image> <image>", "a"), r"2 <image> markers"),
    (record("missing.png"), r"image 'missing.png' not found"),
    (record("red.png", "<image>", "a", "b"), "must end with a gpt turn"),
    ({"image": "red.png", "conversations": [{"from": "gpt", "value": "a"}]}, "turn 0 is from 'gpt', expected 'human'"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}, "turn 1 is from 'human'"),
    ({"conversations": [{"from": "bot", "value": "a"}]}, "turn 0 must be"),
    ({"image": "red.png"}, "needs a 'conversations' list"),
])
def test_validation_names_file_and_record(folder, bad, message):
    path = write(folder / "bad.json", [record("red.png"), bad])
    with pytest.raises(MmtoolError, match=message) as caught:
        read_conversations(path)
    assert str(caught.value).startswith(f"{path}#1: ") and "\n" not in str(caught.value)


def test_unsupervised_sample_fails_at_dataset_construction(folder):
    conversations, source = read_conversations(write(folder / "d.json", [record("red.png")]))
    with pytest.raises(MmtoolError, match=r"d\.json#0: no assistant token to train on within max_length 5"):
        ConversationDataset(conversations, source, word_tokenizer(WORDS), "<image>", 1, None, max_length=5)


def test_file_errors(tmp_path):
    with pytest.raises(MmtoolError, match="does not exist"):
        read_conversations(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(MmtoolError, match=r"x\.json: invalid JSON"):
        read_conversations(tmp_path / "x.json")
