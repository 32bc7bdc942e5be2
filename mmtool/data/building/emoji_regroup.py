"""Another style held out without rendering again: the shards of `mmtool data emoji --eval-style B` regrouped from a
build of the same styles with style A held out (or none).

Rendering every style's SVGs is nearly all of a build's time (~5 min on two cores for the five styles), and the
renders do not depend on the held-out style: the split goes by base concept, and a build writes its samples concept
by concept, style by style, each to train / val, or heldout_train / heldout_val for the held-out style. Putting the
source's samples back in that order and writing them with the new held-out style gives the same bytes as a direct
build (tar members are written with mtime 0), so `mmtool clip-folds` renders once and regroups for the other folds.
"""
import json
import shutil
from collections import Counter
from pathlib import Path

from mmtool.data.building.emoji import HELDOUT, REPORT_FILE
from mmtool.data.building.emoji_catalog import read_emoji
from mmtool.data.building.shard_writer import SplitWriter, write_meta
from mmtool.data.reading.shard_reader import META_FILE, iter_tar_groups
from mmtool.errors import MmtoolError


def regroup_emoji(source: Path, out: Path, eval_style: str | None, shard_size: int = 1000) -> dict:
    """Writes out/ as `mmtool data emoji` with `eval_style` held out would, from the shards in source/."""
    meta = read_source_meta(source)
    styles = list(meta["styles"])  # in the build's style order
    if eval_style is not None and eval_style not in styles:
        raise MmtoolError(f"--eval-style {eval_style} is not among {source}'s styles {','.join(styles)}")
    if Path(out).resolve() == Path(source).resolve():
        raise MmtoolError(f"--out {out} is the source folder: regroup into another one")
    entries = read_emoji()[:meta["limit"]]
    concept_order = {"-".join(f"{cp:x}" for cp in emoji.codepoints): i for i, emoji in enumerate(entries)}
    samples = sorted(read_samples(source, meta), key=lambda s: build_position(s, styles, concept_order))
    counts = {name: Counter() for name in styles}
    with SplitWriter(out, shard_size) as shards:
        for style, split, members in samples:
            split = split.removeprefix(HELDOUT)
            split = HELDOUT + split if style == eval_style else split
            shards.write(split, members)
            counts[style][split] += 1
        written = shards.close()
    for name in (meta["report"], meta["attribution"]):
        shutil.copyfile(source / name, out / name)
    per_style = {name: {**info, "samples": dict(counts[name])} for name, info in meta["styles"].items()}
    write_meta(out, "emoji", written, image_size=meta["image_size"], val_fraction=meta["val_fraction"],
               seed=meta["seed"], limit=meta["limit"], styles=per_style, eval_style=eval_style,
               concepts=meta["concepts"], report=meta["report"], attribution=meta["attribution"])
    return {"out": str(out), "from": str(source), "eval_style": eval_style,
            "samples": {split: info["samples"] for split, info in written.items()}}


def read_source_meta(source: Path) -> dict:
    path = Path(source) / META_FILE
    if not path.is_file():
        raise MmtoolError(f"--from {source}: no {META_FILE} (a folder written by mmtool data emoji)")
    meta = json.loads(path.read_text())
    if meta.get("dataset") != "emoji" or meta.get("report") != REPORT_FILE:
        raise MmtoolError(f"{path}: dataset {meta.get('dataset')!r}, not an mmtool data emoji build")
    return meta


def read_samples(source: Path, meta: dict):
    """(style, split, tar members) of every sample in the source's shards, nothing left out."""
    for split, info in meta["splits"].items():
        for shard in info["shards"]:
            skipped = Counter()
            for group in iter_tar_groups(str(source / shard), skipped):
                members = {k: v for k, v in group.items() if k == "__key__" or not k.startswith("__")}
                yield group["__key__"].split("_", 1)[0], split, members
            if skipped:
                raise MmtoolError(f"{source / shard}: unreadable ({dict(skipped)}): rebuild it with mmtool data emoji")


def build_position(sample: tuple, styles: list[str], concept_order: dict) -> tuple[int, int]:
    """Where a build writes the sample: concept by concept in the catalogue's order, then style by style."""
    style, _, members = sample
    codepoints = members["__key__"].split("_", 1)[1]
    if style not in styles or codepoints not in concept_order:
        raise MmtoolError(f"sample {members['__key__']}: style or concept not in the source build")
    return concept_order[codepoints], styles.index(style)
