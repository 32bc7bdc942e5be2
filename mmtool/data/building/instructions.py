"""Instruction data (LLaVA conversation JSON) generated from the emoji shards' metadata.

Every image of the shards gets one conversation per task:
- `what`: "What is this?" -> the emoji's name;
- `group`: "Which emoji group does this belong to?" -> its Unicode group;
- `describe`: "Describe this image." -> name, group, subgroup and keywords in a sentence;
- `yesno`: "Is this <name>?" / "Does this belong to the <group> group?" -> "Yes." or "No."; true and false premises
  are balanced exactly (half of each split's yes/no conversations, assigned by a seeded permutation), and a false
  premise names another concept (a different base emoji) of the same split;
- `multi`: three turns in one conversation (what, group, a yes/no question).

Splits follow the shards: `train-*.tar` -> train.json, `val-*.tar` -> val.json (its concepts never appear in train:
the held-out set), `heldout_*` likewise. Images are written out as files (`images/<key>.png`, referenced relative
to the JSON), so the files are plain LLaVA data any tool reads. The same shards and seed give the same files.
"""
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mmtool.checkpoint import atomic_write
from mmtool.data.building.emoji import readable_name
from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples, seeded_rng
from mmtool.data.reading.shard_reader import shard_name
from mmtool.errors import MmtoolError

TASKS = ("what", "group", "describe", "yesno", "multi")
IMAGE_DIR = "images"
WHAT_QUESTIONS = ("What is this?", "What does this emoji show?", "Name this emoji.")
GROUP_QUESTION = "Which emoji group does this belong to?"
DESCRIBE_QUESTION = "Describe this image."


def build_instructions(shards: str, out: Path, tasks: str = ",".join(TASKS), seed: int = 0) -> dict:
    """Writes out/<split>.json and out/images/; returns conversation counts per split and task."""
    wanted = parse_tasks(tasks)
    skipped = Counter()
    by_split = defaultdict(list)  # split -> [(key, meta, png)]
    for url in resolve_shards(shards):
        for sample in parsed_samples([url], skipped):
            for field in ("name", "group", "base"):
                if not isinstance(sample.meta.get(field), str):
                    raise MmtoolError(f"{url}: sample {sample.key} has no {field!r} field (not an emoji shard?)")
            by_split[split_of(url)].append((sample.key, sample.meta, sample.image))
    if not by_split:
        raise MmtoolError(f"no samples in {shards}")
    images = out / IMAGE_DIR
    images.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, samples in sorted(by_split.items()):
        for key, _, png in samples:
            write_bytes(images / f"{key}.png", png)
        records = split_conversations(samples, wanted, seeded_rng(seed, split))
        write_bytes(out / f"{split}.json", (json.dumps(records, indent=1, ensure_ascii=False) + "\n").encode())
        task_counts = Counter(record["task"] for record in records)
        counts[split] = {"images": len(samples), "conversations": len(records), **dict(sorted(task_counts.items()))}
    return {"out": str(out), "splits": counts, "skipped": dict(skipped)}


def parse_tasks(tasks: str) -> list[str]:
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise MmtoolError(f"unknown task {unknown[0] if unknown else tasks!r} (known: {', '.join(TASKS)})")
    return names


def split_of(url: str) -> str:
    """"data/emoji/val-000000.tar" -> "val"."""
    return shard_name(url).rsplit("-", 1)[0]


def split_conversations(samples: list[tuple[str, dict, bytes]], tasks: list[str], rng: np.random.Generator) -> list:
    """Every task for every sample, shuffled; yes/no premises balanced within the split."""
    names_by_base = defaultdict(set)
    groups = sorted({meta["group"] for _, meta, _ in samples})
    for _, meta, _ in samples:
        names_by_base[meta["base"]].add(readable_name(meta["name"]))
    bases = sorted(names_by_base)
    premises = {}  # (sample index, task) -> is the yes/no premise true; balanced within each task
    for task in ("yesno", "multi"):
        flags = balanced_flags(len(samples), rng) if task in tasks else []
        premises.update({(index, task): flag for index, flag in enumerate(flags)})
    records = []
    for index, (key, meta, _) in enumerate(samples):
        for task in tasks:
            truth = premises.get((index, task), True)
            turns = TASK_BUILDERS[task](meta, truth, rng, bases, names_by_base, groups)
            records.append(llava_record(f"{key}:{task}", key, task, turns))
    order = rng.permutation(len(records))
    return [records[i] for i in order]


def balanced_flags(count: int, rng: np.random.Generator) -> list[bool]:
    """count flags, half True (an odd one out is False), in a seeded random order."""
    flags = np.arange(count) < count // 2
    return [bool(flag) for flag in rng.permutation(flags)]


def llava_record(record_id: str, key: str, task: str, turns: list[tuple[str, str]]) -> dict:
    conversations = []
    for index, (question, answer) in enumerate(turns):
        value = f"<image>\n{question}" if index == 0 else question
        conversations += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    return {"id": record_id, "image": f"{IMAGE_DIR}/{key}.png", "task": task, "conversations": conversations}


def what_turn(meta, truth, rng, bases, names_by_base, groups):
    return [(WHAT_QUESTIONS[int(rng.integers(len(WHAT_QUESTIONS)))], readable_name(meta["name"]))]


def group_turn(meta, truth, rng, bases, names_by_base, groups):
    return [(GROUP_QUESTION, meta["group"])]


def describe_turn(meta, truth, rng, bases, names_by_base, groups):
    answer = (f"An emoji of {readable_name(meta['name'])}, in the {meta['group']} group "
              f"({meta.get('subgroup', '').replace('-', ' ')}).")
    keywords = [k for k in meta.get("keywords", [])[:4] if isinstance(k, str)]
    if keywords:
        answer += f" Keywords: {', '.join(keywords)}."
    return [(DESCRIBE_QUESTION, answer)]


def yesno_turn(meta, truth, rng, bases, names_by_base, groups):
    """A name question or a group question (seeded coin), with a true or false premise."""
    if rng.random() < 0.5 or len(groups) < 2:
        others = [base for base in bases if base != meta["base"]]
        if truth or not others:
            name = readable_name(meta["name"])
            truth = True
        else:
            name = sorted(names_by_base[others[int(rng.integers(len(others)))]])[0]
        return [(f"Is this {name}?", "Yes." if truth else "No.")]
    group = meta["group"] if truth else [g for g in groups if g != meta["group"]][int(rng.integers(len(groups) - 1))]
    return [(f"Does this belong to the {group} group?", "Yes." if truth else "No.")]


def multi_turn(meta, truth, rng, bases, names_by_base, groups):
    return (what_turn(meta, truth, rng, bases, names_by_base, groups)
            + group_turn(meta, truth, rng, bases, names_by_base, groups)
            + yesno_turn(meta, truth, rng, bases, names_by_base, groups))


TASK_BUILDERS = {"what": what_turn, "group": group_turn, "describe": describe_turn, "yesno": yesno_turn,
                 "multi": multi_turn}


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda temporary: temporary.write_bytes(data))
