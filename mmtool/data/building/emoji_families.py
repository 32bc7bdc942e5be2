"""Emoji concept families: a concept with its skin-tone and gender variants ("man cook: dark skin tone", "cook").

Unicode multiplies some people emoji by 5 skin tones and 2-3 genders, so People & Body holds over half of the
emoji images while its families are an eighth of the concepts. Keeping a few variants per family gives a
concept-balanced set, in which the commonest group no longer answers most group questions.
"""
import re

GENDER_WORD = re.compile(r"^(man|woman|person|men|women|people|boy|girl|adult|child|older person) ")
VARIANT_DETAIL = ("skin tone", "hair", "bald", "beard")


def family_of(name: str) -> str:
    """CLDR name -> its family: "woman cook: medium skin tone" -> "cook"; "flag: Japan" stays itself."""
    head, _, detail = name.partition(": ")
    stem = head if any(word in detail for word in VARIANT_DETAIL) else name
    return GENDER_WORD.sub("", stem)


def kept_names(names: set[str], per_family: int) -> set[str]:
    """The per_family simplest names of every family (shortest first, then alphabetical: the plain concept
    before its variants), the same whatever the split, so held-out styles keep the training concepts."""
    if per_family < 1:
        raise ValueError(f"variants per family must be >= 1, got {per_family}")
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(family_of(name), []).append(name)
    return {name for members in families.values() for name in sorted(members, key=lambda n: (len(n), n))[:per_family]}
