"""The emoji corpus: the same concepts in up to five drawing styles, in train/val shards split by base concept,
captioned from Unicode names and CLDR keywords; one style may be held out of training entirely."""
import json
import time
from collections import Counter
from pathlib import Path

from mmtool.data.building.emoji_catalog import Emoji, read_emoji
from mmtool.data.building.emoji_licences import write_attribution
from mmtool.data.building.emoji_render import NOTO_FONT, render_all, require_cairo
from mmtool.data.building.emoji_styles import STYLES, find_artwork, parse_styles
from mmtool.data.building.shard_writer import SplitWriter, hash_split, write_meta
from mmtool.data.reading.sample_format import encode_sample
from mmtool.errors import MmtoolError
from mmtool.progress import progress

REPORT_FILE = "styles_report.json"
HELDOUT = "heldout_"  # split prefix of the held-out style's images: heldout_train-*.tar, heldout_val-*.tar
NPM_CACHE = Path(".cache/npm")


def readable_name(name: str) -> str:
    """CLDR "flag: Japan" / "waving hand: medium skin tone" / "kiss: woman, man" as running text."""
    head, _, detail = name.partition(": ")
    if not detail:
        return name
    if head == "flag":
        return f"flag of {detail}"
    if head == "keycap":
        return f"keycap {detail}"
    if any(word in detail for word in ("skin tone", "hair", "bald", "beard")):
        return f"{head} with {detail}"
    return f"{head} ({detail})"


def emoji_captions(emoji: Emoji) -> list[str]:
    """Several phrasings, the first canonical (the one eval retrieval uses)."""
    name = readable_name(emoji.name)
    subgroup = emoji.subgroup.replace("-", " ")
    group = emoji.group.lower()
    phrasings = [f"an emoji of {name}", name, f"{name} emoji", f"a {subgroup} emoji showing {name}",
                 f"{name}, from the {group} emoji group", f"a picture of {name}"]
    if emoji.keywords:
        phrasings += [f"{name}: {', '.join(emoji.keywords[:4])}", f"an emoji about {', '.join(emoji.keywords[:3])}"]
    return list(dict.fromkeys(phrasings))


def emoji_sample(emoji: Emoji, style: str, png: bytes) -> dict:
    labels = {"group": emoji.group, "subgroup": emoji.subgroup, "name": emoji.name, "concept": emoji.name,
              "keywords": list(emoji.keywords), "base": emoji.base, "emoji": emoji.text, "style": style}
    key = f"{style}_" + "-".join(f"{cp:x}" for cp in emoji.codepoints)
    return encode_sample(key, png, emoji_captions(emoji), labels)


def build_emoji(out: Path, image_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
                limit: int | None = None, shard_size: int = 1000, styles: str = "noto",
                eval_style: str | None = None, npm_cache: Path = NPM_CACHE, processes: int = 2) -> dict:
    """Writes out/{train,val}-%06d.tar (+ heldout_{train,val} with eval_style), meta.json, styles_report.json
    and ATTRIBUTION.md; returns counts and timing.

    The split goes by base emoji (skin-tone / hair / gender variants share one), hashed with `seed`, so variants
    never straddle it and every style of a concept lands on the same side. `eval_style`'s images go to
    heldout_train (its drawings of train concepts) and heldout_val (of val concepts) instead. `limit` keeps the
    first N emoji of Unicode's order. Concepts a style has no drawing of are listed in styles_report.json.
    """
    names = parse_styles(styles, eval_style)
    if "noto" in names and not NOTO_FONT.is_file():
        raise MmtoolError(f"{NOTO_FONT} is missing: apt-get install -y fonts-noto-color-emoji")
    if any(STYLES[name].package for name in names):
        require_cairo()
    start = time.perf_counter()
    catalogue = read_emoji()
    entries = catalogue[:limit]
    artwork = {name: find_artwork(STYLES[name], catalogue, npm_cache) for name in names}
    # Concept by concept, so every shard mixes the styles.
    jobs = [(emoji, name) for emoji in entries for name in names if emoji.name in artwork[name].drawings]
    unmatched = {name: {e.name for e in entries} - artwork[name].drawings.keys() for name in names}
    samples = {name: Counter() for name in names}
    with SplitWriter(out, shard_size) as shards:
        pngs = progress(render_all([artwork[name].drawings[emoji.name] for emoji, name in jobs], image_size,
                                   processes), total=len(jobs), desc="render", unit="img")
        for (emoji, name), png in zip(jobs, pngs):
            if png is None:
                unmatched[name].add(emoji.name)
                continue
            split = hash_split(emoji.base, val_fraction, seed)
            split = HELDOUT + split if name == eval_style else split
            shards.write(split, emoji_sample(emoji, name, png))
            samples[name][split] += 1
        written = shards.close()
    order = {emoji.name: i for i, emoji in enumerate(entries)}
    report = {name: {"source": artwork[name].source, "unmatched": sorted(unmatched[name], key=order.get),
                     "unused_files": artwork[name].unused_files} for name in names}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    per_style = {name: {"source": artwork[name].source, "samples": dict(samples[name]),
                        "matched": sum(samples[name].values()), "unmatched": len(unmatched[name]),
                        "unused_files": len(artwork[name].unused_files)} for name in names}
    attribution = write_attribution(out, [STYLES[name] for name in names], image_size, npm_cache)
    write_meta(out, "emoji", written, image_size=image_size, val_fraction=val_fraction, seed=seed, limit=limit,
               styles=per_style, eval_style=eval_style, concepts=len(entries), report=REPORT_FILE,
               attribution=attribution)
    return {"out": str(out), "samples": {split: info["samples"] for split, info in written.items()},
            "styles": {name: {k: per_style[name][k] for k in ("matched", "unmatched")} for name in names},
            "eval_style": eval_style, "concepts": len(entries), "bases": len({e.base for e in entries}),
            "report": str(out / REPORT_FILE), "seconds": round(time.perf_counter() - start, 1)}
