"""Hand-made emoji-like shards (a few coloured squares with emoji metadata) for the stage-3 data tests."""
import io
from pathlib import Path

from PIL import Image

from mmtool.data.building.shard_writer import SplitWriter
from mmtool.data.reading.sample_format import encode_sample

# (split, key, name, group, subgroup, base, keywords)
EMOJI = [
    ("train", "noto_1f600", "grinning face", "Smileys & Emotion", "face-smiling", "1f600", ["face", "grin"]),
    ("train", "noto_1f44b", "waving hand", "People & Body", "hand-fingers-open", "1f44b", ["hand", "wave"]),
    ("train", "noto_1f44b-1f3fb", "waving hand: light skin tone", "People & Body", "hand-fingers-open", "1f44b",
     ["hand"]),
    ("train", "noto_1f34e", "red apple", "Food & Drink", "food-fruit", "1f34e", ["apple", "fruit"]),
    ("train", "noto_1f697", "automobile", "Travel & Places", "transport-ground", "1f697", ["car"]),
    ("val", "noto_1f431", "cat face", "Animals & Nature", "animal-mammal", "1f431", ["cat", "pet"]),
    ("val", "noto_1f34c", "banana", "Food & Drink", "food-fruit", "1f34c", ["fruit"]),
    ("val", "noto_1f680", "rocket", "Travel & Places", "transport-air", "1f680", ["space"]),
]


def png(color: tuple[int, int, int], size: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_emoji_shards(out: Path) -> Path:
    with SplitWriter(out, shard_size=3) as writer:
        for index, (split, key, name, group, subgroup, base, keywords) in enumerate(EMOJI):
            labels = {"name": name, "group": group, "subgroup": subgroup, "base": base, "keywords": keywords,
                      "concept": name, "style": "noto"}
            writer.write(split, encode_sample(key, png((30 * index, 255 - 30 * index, 100)), [name], labels))
    return out
