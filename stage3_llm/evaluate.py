"""Answer accuracy on held-out conversations: greedy answers scored by exact match and contains-answer.

Each conversation's first question is asked about its image (later turns of multi-turn conversations are not
scored) and the generated answer is compared, after normalisation (lower case, punctuation and repeated spaces
dropped), with the reference answer: exact match = equal; contains-answer = the reference occurs in the answer as
whole words.
"""
import re
from collections import defaultdict

from mmtool.errors import MmtoolError
from stage3_llm.generate import generate

NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    return NON_WORD.sub(" ", text.lower()).strip()


def exact_match(answer: str, reference: str) -> bool:
    return normalize(answer) == normalize(reference)


def contains_answer(answer: str, reference: str) -> bool:
    expected = normalize(reference)
    return bool(expected) and f" {expected} " in f" {normalize(answer)} "


def score(results: list[dict]) -> dict:
    """{"all": {...}, task: {...}} with n, exact_match and contains_answer rates, from per-sample results."""
    groups = defaultdict(list)
    for result in results:
        groups["all"].append(result)
        groups[result["task"]].append(result)
    return {name: {"n": len(items), "exact_match": sum(r["exact_match"] for r in items) / len(items),
                   "contains_answer": sum(r["contains_answer"] for r in items) / len(items)}
            for name, items in sorted(groups.items(), key=lambda item: (item[0] != "all", item[0]))}


def answer_conversations(bundle, conversations, source, max_new_tokens: int = 32) -> list[dict]:
    """Greedy answers to each conversation's first question, with their scores."""
    results = []
    tokenizer = bundle.tokenizer
    for conversation in conversations:
        question, reference = conversation.turns[0]["content"], conversation.turns[1]["content"]
        if conversation.image is None:
            raise MmtoolError(f"{conversation.where}: eval-llava scores questions about images; this one has none")
        image = bundle.preprocess(source.read(conversation.image))
        ids = generate(bundle.model, tokenizer, image, question, bundle.num_image_tokens, max_new_tokens)
        answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
        results.append({"where": conversation.where, "task": conversation.extra.get("task", "-"), "question": question,
                        "reference": reference, "answer": answer, "exact_match": exact_match(answer, reference),
                        "contains_answer": contains_answer(answer, reference)})
    return results


def format_table(scores: dict) -> str:
    lines = [f"{'task':<10} {'n':>5} {'exact':>7} {'contains':>9}"]
    lines += [f"{name:<10} {row['n']:>5} {row['exact_match']:>7.1%} {row['contains_answer']:>9.1%}"
              for name, row in scores.items()]
    return "\n".join(lines)
