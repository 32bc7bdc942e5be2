"""The emoji list: Unicode's emoji-test.txt (names, groups) joined with CLDR keywords, plus a variant-free base."""
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from mmtool.errors import MmtoolError

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
CLDR_ANNOTATIONS = (Path("/usr/share/unicode/cldr/common/annotations/en.xml"),
                    Path("/usr/share/unicode/cldr/common/annotationsDerived/en.xml"))
LINE = re.compile(r"^([0-9A-F ]+?)\s*;\s*fully-qualified\s*#\s*\S+\s+E\d+\.\d+\s+(.+)$")

# Dropped from the base: variation selector, ZWJ, skin tones, hair styles, gender signs.
VARIANT_CODEPOINTS = {0xFE0F, 0x200D, *range(0x1F3FB, 0x1F400), *range(0x1F9B0, 0x1F9B4), 0x2640, 0x2642}
# Gendered forms of one concept, mapped to the gender-neutral form's codepoints (after the drop above).
GENDERED = {
    0x1F468: (0x1F9D1,), 0x1F469: (0x1F9D1,),  # man, woman -> person
    0x1F466: (0x1F9D2,), 0x1F467: (0x1F9D2,),  # boy, girl -> child
    0x1F474: (0x1F9D3,), 0x1F475: (0x1F9D3,),  # old man, old woman -> older person
    0x1F934: (0x1FAC5,), 0x1F478: (0x1FAC5,),  # prince, princess -> person with crown
    0x1F930: (0x1FAC4,), 0x1FAC3: (0x1FAC4,),  # pregnant woman, pregnant man -> pregnant person
    0x1F57A: (0x1F483,),  # man dancing -> woman dancing (there is no neutral dancer)
    0x1F385: (0x1F9D1, 0x1F384), 0x1F936: (0x1F9D1, 0x1F384),  # Santa, Mrs. Claus -> mx claus
    0x1F46B: (0x1F9D1, 0x1F91D, 0x1F9D1), 0x1F46C: (0x1F9D1, 0x1F91D, 0x1F9D1),  # holding hands
    0x1F46D: (0x1F9D1, 0x1F91D, 0x1F9D1),
    0x1F48F: (0x1F9D1, 0x2764, 0x1F48B, 0x1F9D1),  # kiss -> "kiss: person, person"
    0x1F491: (0x1F9D1, 0x2764, 0x1F9D1),  # couple with heart -> "couple with heart: person, person"
}


@dataclass(frozen=True)
class Emoji:
    text: str  # the emoji itself
    codepoints: tuple[int, ...]
    name: str  # CLDR short name, e.g. "waving hand: medium skin tone"
    group: str  # e.g. "People & Body"
    subgroup: str  # e.g. "hand-fingers-open"
    keywords: tuple[str, ...]  # CLDR keywords other than the name
    base: str  # codepoints without skin tone / hair / gender variation: variants share it


def base_of(codepoints: tuple[int, ...]) -> str:
    kept = [mapped for cp in codepoints if cp not in VARIANT_CODEPOINTS for mapped in GENDERED.get(cp, (cp,))]
    return "-".join(f"{cp:x}" for cp in kept)


def read_keywords(paths=CLDR_ANNOTATIONS) -> dict[str, list[str]]:
    """{emoji without U+FE0F: keywords} from CLDR annotation files (later files fill gaps only)."""
    keywords: dict[str, list[str]] = {}
    for path in paths:
        for node in ET.parse(path).getroot().iter("annotation"):
            if node.get("type") != "tts" and node.text:
                keywords.setdefault(node.get("cp"), [k.strip() for k in node.text.split("|") if k.strip()])
    return keywords


def read_emoji(test_file: Path = EMOJI_TEST, annotation_files=CLDR_ANNOTATIONS) -> list[Emoji]:
    """Every fully-qualified emoji of emoji-test.txt, in its (CLDR) order."""
    for path in (test_file, *annotation_files):
        if not path.is_file():
            raise MmtoolError(f"{path} is missing: apt-get install -y unicode-data unicode-cldr-core")
    keywords = read_keywords(annotation_files)
    entries, group, subgroup = [], "", ""
    for line in test_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif match := LINE.match(line):
            codepoints = tuple(int(cp, 16) for cp in match.group(1).split())
            text = "".join(map(chr, codepoints))
            name = match.group(2).strip()
            words = [k for k in keywords.get(text.replace("\ufe0f", ""), []) if k.lower() != name.lower()]
            entries.append(Emoji(text, codepoints, name, group, subgroup, tuple(words), base_of(codepoints)))
    return entries
