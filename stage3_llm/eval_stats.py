"""The statistics beside each eval-llava score: a Wilson 95% interval and the majority-answer baseline."""
import math
from collections import Counter

from stage3_llm.answer_match import normalize

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate; unlike p ± z·se it stays inside [0, 1] and is sound for small
    n and rates near 0 or 1. (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    rate = successes / n
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def majority_answer(references: list[str]) -> dict:
    """The commonest reference (after normalisation) and the share of references it matches exactly: the score
    of a model that always gives it. Ties go to the alphabetically first answer."""
    counts = Counter(normalize(reference) for reference in references)
    answer, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = next(reference for reference in references if normalize(reference) == answer)
    return {"answer": shown, "rate": count / len(references)}
