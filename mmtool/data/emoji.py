"""Noto Color Emoji rendered with Pillow into train/val shards, captioned from Unicode names and CLDR keywords."""
import io
import time
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mmtool.data.emoji_catalog import Emoji, read_emoji
from mmtool.data.images import pad_to_square
from mmtool.data.sample_format import encode_sample
from mmtool.data.shards import SplitWriter, hash_split, write_meta
from mmtool.errors import MmtoolError

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_PIXELS = 109  # the only size of the font's bitmap strikes
NOTO_CELL = (136, 128)  # canvas that holds every glyph at that size


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


def render(emoji: Emoji, font: ImageFont.FreeTypeFont, image_size: int) -> bytes | None:
    """PNG (RGBA, glyph cell padded square, resized) or None when the font has no drawing for it."""
    cell = Image.new("RGBA", NOTO_CELL, (0, 0, 0, 0))
    ImageDraw.Draw(cell).text((0, 0), emoji.text, font=font, embedded_color=True)
    if cell.getchannel("A").getbbox() is None:
        return None
    # Keep the font's framing: "small" and "large" variants must stay different sizes.
    image = pad_to_square(cell).resize((image_size, image_size), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def build_emoji(out: Path, image_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
                limit: int | None = None, shard_size: int = 1000) -> dict:
    """Writes out/{train,val}-%06d.tar and out/meta.json; returns counts, skips and timing.

    The split goes by base emoji (skin-tone / hair / gender variants share one), hashed with `seed`, so
    variants never straddle it. `limit` keeps the first N emoji of Unicode's order.
    """
    if not NOTO_FONT.is_file():
        raise MmtoolError(f"{NOTO_FONT} is missing: apt-get install -y fonts-noto-color-emoji")
    start = time.perf_counter()
    font = ImageFont.truetype(str(NOTO_FONT), NOTO_PIXELS)
    entries = read_emoji()[:limit]
    not_drawn = []
    with SplitWriter(out, shard_size) as shards:
        for emoji in entries:
            png = render(emoji, font, image_size)
            if png is None:
                not_drawn.append(emoji.name)
                continue
            labels = {"group": emoji.group, "subgroup": emoji.subgroup, "name": emoji.name, "concept": emoji.name,
                      "keywords": list(emoji.keywords), "base": emoji.base, "emoji": emoji.text, "style": "noto"}
            key = "noto_" + "-".join(f"{cp:x}" for cp in emoji.codepoints)
            sample = encode_sample(key, png, emoji_captions(emoji), labels)
            shards.write(hash_split(emoji.base, val_fraction, seed), sample)
        written = shards.close()
    skipped = Counter({"not_drawn": len(not_drawn)}) if not_drawn else Counter()
    write_meta(out, "noto-emoji", written, image_size=image_size, val_fraction=val_fraction, seed=seed,
               skipped=dict(skipped), source=str(NOTO_FONT))
    return {"out": str(out), "samples": {split: info["samples"] for split, info in written.items()},
            "bases": len({e.base for e in entries}), "skipped": dict(skipped), "not_drawn": not_drawn,
            "seconds": round(time.perf_counter() - start, 1)}
