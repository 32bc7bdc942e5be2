"""eval-llava scores a description by the name and the group it opens with, for the model and its blind copies."""
import random

import pytest

from mmtool.data.building.instructions import describe_turn, readable_name
from stage3_llm.describe_fields import describe_fields
from stage3_llm.evaluate import score


def description(name: str, group: str) -> str:
    meta = {"name": name, "group": group, "subgroup": "face-smiling", "keywords": ["face", "smile, big"]}
    (_, answer), = describe_turn(meta, None, random.Random(0), 0, 0)
    return answer


def test_the_fields_are_read_back_from_the_builders_own_descriptions():
    for name, group in (("grinning_face", "Smileys & Emotion"), ("flag: St. Barthélemy", "Flags"),
                        ("keycap: 10", "Symbols")):
        assert describe_fields(description(name, group)) == {"name": readable_name(name), "group": group}
    assert describe_fields("A drawing of a cat.") == {"name": "", "group": ""}


def answered(reference: str, answer: str, blank: str) -> dict:
    return {"task": "describe", "reference": reference, "answer": answer, "exact_match": False,
            "contains_answer": False, "blind_blank": {"answer": blank, "exact_match": False, "contains_answer": False}}


def test_descriptions_are_scored_by_name_and_group_beside_the_blind_copy():
    cat, dog = description("cat", "Animals"), description("dog", "Animals")
    flag = description("flag: Japan", "Flags")
    results = [answered(cat, cat.replace("Keywords", "Words"), dog),  # name and group right, keywords not
               answered(cat, dog, flag),  # group right
               answered(flag, cat, "Japan"),  # nothing right; the blank copy's text has no fields
               answered(dog, "dog", dog)]  # no description at all: not even the name counts
    scores = score(results)
    assert scores["describe:name"]["exact_match"] == pytest.approx(1 / 4)
    assert scores["describe:group"]["exact_match"] == pytest.approx(2 / 4)
    assert scores["describe:name"]["blind_blank"]["exact_match"] == pytest.approx(1 / 4)
    assert scores["describe:group"]["blind_blank"]["exact_match"] == pytest.approx(2 / 4)
    assert scores["describe:group"]["majority"] == {"answer": "Animals", "rate": 0.75}
    assert scores["all"]["n"] == 4 and scores["describe"]["exact_match"] == 0.0
    free_form = score([answered("A grinning cat on a red cushion.", "A cat.", "A dog.")])
    assert set(free_form) == {"all", "describe"}  # no fields to score
