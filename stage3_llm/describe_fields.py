"""A description scored field by field: exact match of a whole generated sentence (subgroup and keywords included)
is near 0% for every model and baseline, so it cannot tell a model that sees from one that guesses. The name and
the group a description opens with (mmtool/data/building/instructions.py, DESCRIBE_HEAD) are scored as tasks of
their own, "describe:name" and "describe:group", beside the blind copies' fields."""
import re

from mmtool.data.building.instructions import DESCRIBE_HEAD
from stage3_llm.answer_match import contains_answer, exact_match

FIELDS = ("name", "group")
PATTERN = re.compile(re.escape(DESCRIBE_HEAD).replace(re.escape("{name}"), "(?P<name>.+?)")
                     .replace(re.escape("{group}"), "(?P<group>.+?)"))


def describe_fields(text: str) -> dict[str, str]:
    """{"name", "group"} of a description's opening; empty strings where the text does not open that way."""
    match = PATTERN.match(text.strip())
    return {field: match.group(field) if match else "" for field in FIELDS}


def field_results(results: list[dict], blind: tuple[str, ...]) -> list[dict]:
    """One result per describe result and field (task "describe:<field>"), scored on that field alone, with the
    blind copies' answers scored the same way; a reference that does not open as DESCRIBE_HEAD adds none."""
    derived = []
    for result in results:
        if result["task"] != "describe":
            continue
        reference = describe_fields(result["reference"])
        if not reference["name"]:
            continue
        for field in FIELDS:
            item = {"task": f"describe:{field}", "reference": reference[field],
                    **scored(describe_fields(result["answer"])[field], reference[field])}
            for name in blind:
                if name in result:
                    item[name] = scored(describe_fields(result[name]["answer"])[field], reference[field])
            derived.append(item)
    return derived


def scored(answer: str, reference: str) -> dict:
    return {"answer": answer, "exact_match": bool(answer) and exact_match(answer, reference),
            "contains_answer": contains_answer(answer, reference)}
