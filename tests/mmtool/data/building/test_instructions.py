"""The instruction-data generator: tasks, balanced yes/no premises, held-out split, determinism, the CLI."""
import json
import subprocess
import sys
from collections import Counter

import pytest

from mmtool.data.building.instructions import build_instructions
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


def test_every_task_for_every_image_and_the_split_follows_the_shards(generated):
    out, summary = generated
    train, val = load(out / "train.json"), load(out / "val.json")
    assert summary["splits"]["train"]["images"] == 5 and summary["splits"]["val"]["images"] == 3
    assert Counter(r["task"] for r in train) == {task: 5 for task in ("what", "group", "describe", "yesno", "multi")}
    val_names = {name for split, _, name, *_ in EMOJI if split == "val"}
    train_text = json.dumps(train)
    assert not any(name in train_text for name in val_names)  # held-out concepts never appear in training data
    what = {r["image"]: r["conversations"][1]["value"] for r in val if r["task"] == "what"}
    assert what == {"images/noto_1f431.png": "cat face", "images/noto_1f34c.png": "banana",
                    "images/noto_1f680.png": "rocket"}
    group = {r["image"]: r["conversations"][1]["value"] for r in train if r["task"] == "group"}
    assert group["images/noto_1f697.png"] == "Travel & Places"
    assert (out / "images" / "noto_1f431.png").is_file()


def test_yes_no_premises_are_balanced_and_true(generated):
    out, _ = generated
    train = load(out / "train.json")
    meta = {f"images/{key}.png": (name, group, base) for _, key, name, group, _, base, _ in EMOJI}
    names_of_base = {}
    for _, _, name, _, _, base, _ in EMOJI:
        names_of_base.setdefault(base, set()).add(name.replace(": ", " with "))
    for task in ("yesno", "multi"):
        answers = Counter()
        for record in (r for r in train if r["task"] == task):
            question = record["conversations"][-2]["value"].removeprefix("<image>\n")
            answer = record["conversations"][-1]["value"]
            answers[answer] += 1
            name, group, base = meta[record["image"]]
            if question.startswith("Is this "):
                asked = question.removeprefix("Is this ").removesuffix("?")
                assert (answer == "Yes.") == (asked in names_of_base[base])
            else:
                asked = question.removeprefix("Does this belong to the ")
                assert (answer == "Yes.") == (asked.removesuffix(" group?") == group)
        assert answers == {"Yes.": 2, "No.": 3}  # 5 conversations: 2 true premises, 3 false


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
    assert json.loads(result.stdout)["splits"]["val"]["conversations"] == 6
    assert {r["task"] for r in load(tmp_path / "val.json")} == {"what", "yesno"}
