"""Scoring one generated answer against its reference, after normalisation (lower case, punctuation and repeated
spaces dropped): exact match = equal; contains-answer = the reference occurs in the answer as whole words."""
import re

NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    return NON_WORD.sub(" ", text.lower()).strip()


def exact_match(answer: str, reference: str) -> bool:
    return normalize(answer) == normalize(reference)


def contains_answer(answer: str, reference: str) -> bool:
    expected = normalize(reference)
    return bool(expected) and f" {expected} " in f" {normalize(answer)} "
