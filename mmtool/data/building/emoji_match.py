"""File names an emoji's artwork may have in each SVG set: Twemoji's code points, Fluent's slugs of CLDR names."""
import re
import unicodedata

ZWJ, VS16 = 0x200D, 0xFE0F
SKIN_TONES = {"light skin tone": "light", "medium-light skin tone": "medium-light", "medium skin tone": "medium",
              "medium-dark skin tone": "medium-dark", "dark skin tone": "dark"}
# Fluent files named after older CLDR names or Microsoft's own (skin tone dropped); first existing file wins.
FLUENT_NAMES = {
    "smiling face with open hands": ("hugging-face",), "face with crossed-out eyes": ("knocked-out-face",),
    "enraged face": ("pouting-face",), "black bird": ("blackbird",), "red triangle pointed up": ("red-triangle",),
    "keycap: #": ("keycap-hashtag",), "keycap: *": ("keycap-asterisk",),
    "stuffed flatbread": ("stuffedbread-flat", "stuffedbread"),  # the package mangled "flat" differently per style
    "merperson": ("person-merpeople",), "merman": ("man-merpeople",), "mermaid": ("woman-merpeople",),
    "deaf person": ("person-deaf",), "deaf man": ("man-deaf",), "deaf woman": ("woman-deaf",),
    "people wrestling": ("person-wrestling",), "men wrestling": ("man-wrestling",),
    "women wrestling": ("woman-wrestling",), "people with bunny ears": ("person-with-bunny-ears",),
    "men with bunny ears": ("man-with-bunny-ears",), "women with bunny ears": ("woman-with-bunny-ears",),
}
FLUENT_WORDS = {"blond": "blonde"}


def twemoji_stems(codepoints: tuple[int, ...]) -> list[str]:
    """Twemoji drops U+FE0F from a file name unless the sequence has a ZWJ; a few ZWJ files drop it anyway."""
    def stem(keep_vs16: bool) -> str:
        return "-".join(f"{cp:x}" for cp in codepoints if keep_vs16 or cp != VS16)
    return list(dict.fromkeys([stem(ZWJ in codepoints), stem(False)]))


def split_skin_tones(name: str) -> tuple[str, list[str]]:
    """"man: dark skin tone, bald" -> ("man: bald", ["dark"]); "waving hand" -> ("waving hand", [])."""
    head, _, detail = name.partition(": ")
    parts = detail.split(", ") if detail else []
    rest = [part for part in parts if part not in SKIN_TONES]
    return ": ".join([head, ", ".join(rest)]) if rest else head, [SKIN_TONES[p] for p in parts if p in SKIN_TONES]


def slugify(text: str) -> str:
    """"Japanese “here” button" -> "japanese-here-button", "piñata" -> "pinata",
    "man: blond hair" -> "man-blonde-hair"."""
    # Accents decompose and go; curly quotes are not ASCII and go too, so "men’s room" -> "mens-room".
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().replace("'", "")
    return "-".join(FLUENT_WORDS.get(word, word) for word in re.findall(r"[a-z0-9]+", ascii_text))


def fluent_slugs(name: str) -> list[str]:
    """Candidate Fluent file stems for a CLDR name; skin tones become suffixes, the untoned form may be "-default"."""
    toneless, tones = split_skin_tones(name)
    bases = FLUENT_NAMES.get(toneless) or (slugify(toneless), "person-" + slugify(toneless))  # "mage" -> person-mage
    if tones:
        return [f"{base}-{'-'.join(tones)}" for base in bases]
    return [stem for base in bases for stem in (base, f"{base}-default")]
