"""The instruction-data generator: tasks, concept families, yes/no pairs a blind model cannot beat 50% on,
held-out split, determinism, the CLI."""
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from mmtool.data.building.emoji import readable_name
from mmtool.data.building.emoji_families import family_of, kept_names
from mmtool.data.building.instructions import build_instructions, split_conversations
from mmtool.errors import MmtoolError
from stage3_llm.conversations import read_conversations
from tests.helpers.emoji import EMOJI, write_emoji_shards
from tests.stage1_clip.test_train_e2e import clean_env


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_emoji_shards(tmp_path_factory.mktemp("emoji_shards"))


@pytest.fixture(scope="module")
def generated(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("instruct")
    summary = build_instructions(f"{shards}/{{train,val}}-*.tar", out, seed=3)
    return out, summary


def load(path):
    return json.loads(path.read_text())


def test_every_task_for_every_kept_image_and_the_split_follows_the_shards(generated):
    out, summary = generated
    train, val = load(out / "train.json"), load(out / "val.json")
    # "waving hand: light skin tone" is a variant of "waving hand": one name per family is kept
    assert summary["splits"]["train"]["images"] == 4 and summary["splits"]["val"]["images"] == 3
    assert Counter(r["task"] for r in train) == {"what": 4, "group": 4, "describe": 4, "yesno": 8, "multi": 4}
    assert "skin tone" not in json.dumps(train)
    val_names = {name for split, _, name, *_ in EMOJI if split == "val"}
    train_text = json.dumps(train)
    assert not any(name in train_text for name in val_names)  # held-out concepts never appear in training data
    what = {r["image"]: r["conversations"][1]["value"] for r in val if r["task"] == "what"}
    assert what == {"images/noto_1f431.png": "cat face", "images/noto_1f34c.png": "banana",
                    "images/noto_1f680.png": "rocket"}
    group = {r["image"]: r["conversations"][1]["value"] for r in train if r["task"] == "group"}
    assert group["images/noto_1f697.png"] == "Travel & Places"
    assert (out / "images" / "noto_1f431.png").is_file()


def test_all_variants_are_kept_on_request(shards, tmp_path):
    summary = build_instructions(f"{shards}/train-*.tar", tmp_path, tasks="what", variants_per_family=None)
    assert summary["splits"]["train"]["images"] == 5


def test_yes_no_answers_are_true_and_the_question_alone_gives_50_percent(generated):
    out, _ = generated
    meta = {f"images/{key}.png": (name, group) for _, key, name, group, *_ in EMOJI}
    for split in ("train", "val"):
        answers_of_question = {}
        for record in (r for r in load(out / f"{split}.json") if r["task"] == "yesno"):
            question = record["conversations"][0]["value"].removeprefix("<image>\n")
            answer = record["conversations"][1]["value"]
            answers_of_question.setdefault(question, Counter())[answer] += 1
            name, group = meta[record["image"]]
            if question.startswith("Is this "):
                assert (answer == "Yes.") == (question == f"Is this {name}?")
            else:
                assert (answer == "Yes.") == (question == f"Does this belong to the {group} group?")
        # A blind model's best is the commoner answer of each question text: exactly half of them.
        blind_best = sum(max(c.values()) for c in answers_of_question.values())
        total = sum(sum(c.values()) for c in answers_of_question.values())
        assert all(c["Yes."] == c["No."] for c in answers_of_question.values())
        assert blind_best / total == 0.5


def test_a_false_name_premise_comes_from_another_family_of_the_same_group():
    meta = [{"name": name, "group": group, "base": name} for name, group in [
        ("cook", "People & Body"), ("woman cook: dark skin tone", "People & Body"), ("waving hand", "People & Body"),
        ("red apple", "Food & Drink"), ("banana", "Food & Drink")]]
    samples = [(f"k{i}", m, b"") for i, m in enumerate(meta)]
    records = split_conversations(samples, ["yesno"], np.random.default_rng(0))
    image_meta = {f"images/k{i}.png": m for i, m in enumerate(meta)}
    for record in (r for r in records if r["conversations"][1]["value"] == "No."):
        question = record["conversations"][0]["value"].removeprefix("<image>\n")
        if question.startswith("Is this "):
            asked = question.removeprefix("Is this ").removesuffix("?")
            partner = image_meta[record["image"]]
            asked_meta = next(m for m in meta if readable_name(m["name"]) == asked)
            assert partner["group"] == asked_meta["group"]
            assert family_of(partner["name"]) != family_of(asked_meta["name"])


def test_multi_yes_no_premises_are_balanced_and_true(generated):
    out, _ = generated
    meta = {f"images/{key}.png": name for _, key, name, *_ in EMOJI}
    answers = Counter()
    for record in (r for r in load(out / "train.json") if r["task"] == "multi"):
        question = record["conversations"][-2]["value"]
        answer = record["conversations"][-1]["value"]
        answers[answer] += 1
        assert (answer == "Yes.") == (question == f"Is this {meta[record['image']]}?")
    assert answers == {"Yes.": 2, "No.": 2}


def test_concept_families():
    assert family_of("woman cook: medium skin tone") == "cook"
    assert family_of("man gesturing NO") == family_of("person gesturing NO") == "gesturing NO"
    assert family_of("flag: Japan") == "flag: Japan"
    assert family_of("kiss: woman, man") == "kiss: woman, man"  # a couple's composition is its own concept
    names = {"cook", "man cook", "woman cook: dark skin tone", "flag: Japan", "flag: France"}
    assert kept_names(names, 1) == {"cook", "flag: Japan", "flag: France"}
    assert kept_names(names, 2) == {"cook", "man cook", "flag: Japan", "flag: France"}


def test_multi_turn_records_read_back_as_valid_llava(generated):
    out, _ = generated
    conversations, _ = read_conversations(out / "val.json")
    multi = [c for c in conversations if c.extra["task"] == "multi"]
    assert len(multi) == 3 and all(len(c.turns) == 6 for c in multi)
    assert [t["role"] for t in multi[0].turns] == ["user", "assistant"] * 3


def test_deterministic_with_a_seed(shards, generated, tmp_path):
    out, _ = generated
    build_instructions(f"{shards}/{{train,val}}-*.tar", tmp_path / "a", seed=3)
    build_instructions(f"{shards}/{{train,val}}-*.tar", tmp_path / "b", seed=4)
    assert (tmp_path / "a" / "train.json").read_bytes() == (out / "train.json").read_bytes()
    assert (tmp_path / "b" / "train.json").read_bytes() != (out / "train.json").read_bytes()


def test_unknown_task_and_non_emoji_shards_fail(shards, tmp_path):
    with pytest.raises(MmtoolError, match="unknown task 'colour'"):
        build_instructions(f"{shards}/train-*.tar", tmp_path, tasks="what,colour")


@pytest.mark.slow
def test_cli(shards, tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmtool", "data", "instructions", "--shards",
                             f"{shards}/{{train,val}}-*.tar", "--out", str(tmp_path), "--tasks", "what,yesno"],
                            capture_output=True, text=True, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["splits"]["val"]["conversations"] == 9  # what + a yes/no pair per image
    assert {r["task"] for r in load(tmp_path / "val.json")} == {"what", "yesno"}
