"""eval-llava's statistics: the Wilson interval, the majority answer and the seeded, balanced per-task choice; the
--blind choice."""
from collections import Counter

import pytest

from mmtool.errors import MmtoolError
from stage3_llm.blind import parse_blind
from stage3_llm.conversations import Conversation
from stage3_llm.eval_stats import majority_answer, wilson_interval
from stage3_llm.evaluate import score
from stage3_llm.task_sample import sample_per_task


@pytest.mark.parametrize("successes, n, low, high", [
    # By hand: p = 0.8, z² = 3.8415; centre = (0.8 + z²/20) / (1 + z²/10) = 0.71674,
    # half = z / (1 + z²/10) * sqrt(0.8 * 0.2 / 10 + z² / 400) = 0.22658.
    (8, 10, 0.49016, 0.94331),
    (0, 10, 0.0, 0.27753),  # z² / (n + z²): the interval does not collapse at a rate of 0
    (50, 100, 0.40383, 0.59617),
])
def test_wilson_interval_hand_computed(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-5)


def test_majority_answer_is_the_commonest_normalised_reference():
    assert majority_answer(["Yes.", "No.", "yes", "No", "No."]) == {"answer": "No.", "rate": 0.6}
    assert majority_answer(["b", "a"])["answer"] == "a"  # a tie goes to the alphabetically first


def conversations(counts: dict[str, int]) -> list[Conversation]:
    items = [(task, index) for task, count in counts.items() for index in range(count)]
    items = sorted(items, key=lambda item: (item[1] * 7919 + len(item[0])) % 97)  # tasks interleaved in the file
    return [Conversation(f"f.json#{i}", [], f"{task}{index}.png", {"task": task})
            for i, (task, index) in enumerate(items)]


def test_per_task_choice_is_seeded_balanced_and_in_file_order():
    pool = conversations({"what": 50, "group": 20, "yesno": 5})
    chosen = sample_per_task(pool, 10, seed=0)
    assert Counter(c.extra["task"] for c in chosen) == {"what": 10, "group": 10, "yesno": 5}
    assert [c.where for c in chosen] == sorted((c.where for c in chosen), key=lambda w: int(w.split("#")[1]))
    assert [c.where for c in sample_per_task(pool, 10, seed=0)] == [c.where for c in chosen]
    assert [c.where for c in sample_per_task(pool, 10, seed=1)] != [c.where for c in chosen]
    # Not the first N of each task: the choice spreads over the whole file.
    whats = [int(c.image.removeprefix("what").removesuffix(".png")) for c in chosen if c.extra["task"] == "what"]
    assert max(whats) >= 20
    # A task's choice does not depend on the other tasks in the file.
    without_group = [c for c in pool if c.extra["task"] != "group"]
    assert ([c.where for c in sample_per_task(without_group, 10, 0) if c.extra["task"] == "what"]
            == [c.where for c in chosen if c.extra["task"] == "what"])
    assert len(sample_per_task(pool, None, 0)) == 75


def result(task, correct, blank, shuffled, tower):
    return {"task": task, "reference": "Yes." if correct else "No.", "answer": "Yes.", "exact_match": correct,
            "contains_answer": correct,
            "blind_blank": {"answer": "No.", "exact_match": blank, "contains_answer": blank},
            "blind_shuffled": {"answer": "No.", "exact_match": shuffled, "contains_answer": shuffled},
            "tower": None if tower is None else {"answer": "Yes.", "correct": tower}}


def test_scores_carry_intervals_majority_blind_and_tower_rates():
    results = ([result("yesno", True, False, True, True)] * 8 + [result("yesno", False, False, False, False)] * 2
               + [result("describe", True, True, True, None)] * 5)
    scores = score(results)
    yesno = scores["yesno"]
    assert yesno["n"] == 10 and yesno["exact_match"] == 0.8
    assert yesno["exact_match_ci"] == pytest.approx([0.49016, 0.94331], abs=1e-5)
    assert yesno["majority"] == {"answer": "Yes.", "rate": 0.8}
    assert yesno["blind_blank"]["exact_match"] == 0.0 and yesno["blind_shuffled"]["exact_match"] == 0.8
    assert yesno["tower"]["accuracy"] == 0.8
    assert "tower" not in scores["describe"] and "tower" not in scores["all"]  # no tower answer to describe
    # Overall: each task's commonest answer, always given (8 of 10 yes/no, 5 of 5 describe).
    assert scores["all"]["majority"]["rate"] == pytest.approx(13 / 15)


def test_blind_copies_parse_in_a_fixed_order():
    assert parse_blind("shuffled,blank") == ("blank", "shuffled")
    assert parse_blind(" shuffled ") == ("shuffled",)
    assert parse_blind("none") == ()
    with pytest.raises(MmtoolError, match="unknown 'grey'"):
        parse_blind("blank,grey")
