"""Answer accuracy on held-out conversations, and the baselines that tell a model that sees from one that guesses.

Each conversation's first question is asked about its image (later turns of multi-turn conversations are not
scored) and the greedy answer is scored by exact match and contains-answer (stage3_llm/answer_match.py). Beside
each task's score: its Wilson 95% interval; the majority answer's rate (always giving the task's commonest
reference); the same model answering with a blank and with a shuffled image (stage3_llm/blind.py: a model that
does not look scores the same); and the stage-1 CLIP tower's own answers (stage3_llm/tower.py).
"""
from collections import defaultdict
from typing import Callable

import torch

from mmtool.data.reading.images import BadSample
from mmtool.errors import MmtoolError
from mmtool.progress import progress
from stage3_llm.answer_match import contains_answer, exact_match, normalize  # noqa: F401 - part of this API
from stage3_llm.blind import BLANK, BLIND_IMAGES, blank_image, shuffled_images
from stage3_llm.describe_fields import field_results
from stage3_llm.eval_stats import majority_answer, wilson_interval
from stage3_llm.generate import generate_batch
from stage3_llm.task_sample import task_of
from stage3_llm.tower import candidates, name_group_pairs, tower_answers

METRICS = ("exact_match", "contains_answer")
BLIND = tuple(f"blind_{image}" for image in BLIND_IMAGES)


def first_turn(conversation) -> tuple[str, str]:
    if conversation.image is None:
        raise MmtoolError(f"{conversation.where}: eval-llava scores questions about images; this one has none")
    return conversation.turns[0]["content"], conversation.turns[1]["content"]


def answer_conversations(bundle, conversations, source, max_new_tokens: int = 32, batch_size: int = 16,
                         show: Callable[[str], str] | None = None) -> list[dict]:
    """Greedy answers to each conversation's first question, with their scores; `show` maps a conversation's
    image to the one shown instead (BLANK for the blank image)."""
    asked = [(conversation, *first_turn(conversation)) for conversation in conversations]
    shown = [show(conversation.image) if show else conversation.image for conversation, _, _ in asked]
    answers = answer_questions(bundle, list(zip(shown, [question for _, question, _ in asked])), source,
                               max_new_tokens, batch_size)
    return [{"where": conversation.where, "task": task_of(conversation), "image": image, "question": question,
             "reference": reference, "answer": answer, "exact_match": exact_match(answer, reference),
             "contains_answer": contains_answer(answer, reference)}
            for (conversation, question, reference), image, answer in zip(asked, shown, answers)]


def answer_questions(bundle, pairs: list[tuple[str, str]], source, max_new_tokens: int, batch_size: int) -> list[str]:
    """Decoded greedy answers to (image reference, question) pairs. Each distinct pair is generated once (greedy
    answers are deterministic), in batches of similar question length (less padding)."""
    distinct = sorted(set(pairs), key=lambda pair: (len(pair[1]), pair))
    size = bundle.record["vision"]["image_size"]
    pixels = {BLANK: blank_image(size)}  # image reference -> [3, S, S]
    decoded = {}
    bar = progress(total=len(distinct), desc="answer", unit="q")
    for start in range(0, len(distinct), batch_size):
        batch = distinct[start:start + batch_size]
        for image, _ in batch:
            if image not in pixels:
                try:
                    pixels[image] = bundle.preprocess(source.read(image))
                except BadSample as err:
                    raise MmtoolError(f"image {image!r}: {err}") from None
        images = torch.stack([pixels[image] for image, _ in batch])  # [B, 3, S, S]
        ids = generate_batch(bundle.model, bundle.tokenizer, images, [question for _, question in batch],
                             bundle.num_image_tokens, max_new_tokens)
        for pair, tokens in zip(batch, ids):
            decoded[pair] = bundle.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        bar.update(len(batch))
    bar.close()
    return [decoded[pair] for pair in pairs]


def add_blind_answers(results: list[dict], bundle, conversations, source, max_new_tokens: int, batch_size: int,
                      seed: int, where: str, images: tuple[str, ...] = BLIND_IMAGES) -> None:
    """results[i]["blind_blank" | "blind_shuffled"] = the same model's answer with a blank / another image, for
    each of `images`."""
    shows = {"blank": lambda image: BLANK}
    if "shuffled" in images:
        shows["shuffled"] = shuffled_images([c.image for c in conversations], seed, where).__getitem__
    for image in images:
        name = f"blind_{image}"
        blind = answer_conversations(bundle, conversations, source, max_new_tokens, batch_size, shows[image])
        for result, other in zip(results, blind):
            result[name] = {key: other[key] for key in ("image", "answer", *METRICS)}


def add_tower_answers(results: list[dict], clip, all_conversations, source) -> None:
    """results[i]["tower"] = {"answer", "correct"} of the CLIP tower, or None where it cannot answer."""
    answers = tower_answers(clip, [r["question"] for r in results], [r["image"] for r in results], source,
                            candidates(all_conversations), name_group_pairs(all_conversations))
    for result, answer in zip(results, answers):
        result["tower"] = None if answer is None else {"answer": answer,
                                                       "correct": exact_match(answer, result["reference"])}


def score(results: list[dict]) -> dict:
    """{"all": row, task: row}: n, exact_match and contains_answer rates with Wilson intervals, the majority
    answer, and the blind and tower rates where the results carry them. Descriptions are also scored by their
    name and group ("describe:name", "describe:group"; not in "all")."""
    by_task = defaultdict(list)
    for result in results:
        by_task[result["task"]].append(result)
    rows = {task: score_rows(items) for task, items in sorted(by_task.items())}
    for task, items in rows.items():
        items["majority"] = majority_answer([r["reference"] for r in by_task[task]])
    overall = score_rows(results)
    # Always giving each task's commonest answer.
    overall["majority"] = {"answer": None,
                           "rate": sum(row["majority"]["rate"] * row["n"] for row in rows.values()) / len(results)}
    by_field = defaultdict(list)
    for item in field_results(results, BLIND):
        by_field[item["task"]].append(item)
    for task, items in by_field.items():
        rows[task] = {**score_rows(items), "majority": majority_answer([r["reference"] for r in items])}
    return {"all": overall, **dict(sorted(rows.items()))}


def score_rows(items: list[dict]) -> dict:
    n = len(items)
    row = {"n": n}
    for metric in METRICS:
        hits = sum(r[metric] for r in items)
        row[metric], row[f"{metric}_ci"] = hits / n, list(wilson_interval(hits, n))
    for name in BLIND:
        if all(name in r for r in items):
            row[name] = {metric: sum(r[name][metric] for r in items) / n for metric in METRICS}
    if all(r.get("tower") for r in items):  # the tower answers every question of the row
        hits = sum(r["tower"]["correct"] for r in items)
        row["tower"] = {"accuracy": hits / n, "ci": list(wilson_interval(hits, n))}
    return row


def format_table(scores: dict) -> str:
    """One line per task: n, exact and contains rates, the exact rate's 95% interval, then the baselines (exact
    match rates; '-' where a baseline does not apply or was not run)."""
    header = (f"{'task':<14} {'n':>5} {'exact':>7} {'contains':>9} {'95% CI':>15} {'majority':>9} "
              f"{'blank':>7} {'shuffled':>9} {'tower':>7}")
    lines = [header]
    for name, row in scores.items():
        low, high = row["exact_match_ci"]
        blank, shuffled = (row.get(key, {}).get("exact_match") for key in BLIND)
        tower = row.get("tower", {}).get("accuracy")
        lines.append(f"{name:<14} {row['n']:>5} {row['exact_match']:>7.1%} {row['contains_answer']:>9.1%} "
                     f"{f'{low:.1%}-{high:.1%}':>15} {percent(row['majority']['rate']):>9} "
                     f"{percent(blank):>7} {percent(shuffled):>9} {percent(tower):>7}")
    lines += ["", "exact match rates; 95% CI: Wilson. majority: always the task's commonest answer; blank / shuffled: "
              "this model shown a grey image / another image of the set; tower: its stage-1 CLIP alone"]
    return "\n".join(lines)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
