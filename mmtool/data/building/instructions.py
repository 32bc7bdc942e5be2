"""Instruction data (LLaVA conversation JSON) generated from the emoji shards' metadata.

Every kept image of the shards gets one conversation per task:
- `what`: "What is this?" -> the emoji's name;
- `group`: "Which emoji group does this belong to?" -> its Unicode group;
- `describe`: "Describe this image." -> name, group, subgroup and keywords in a sentence;
- `yesno`: a premise about the image's own name ("Is this <name>?") or group ("Does this belong to the <group>
  group?"), asked twice: of this image (-> "Yes.") and of a partner image (-> "No."): for a name, another concept
  family of the same group, for a group, an image of another group. Every question text is answered "Yes." as
  often as "No.", so the question alone gives a blind model 50% and nothing more: only the image tells;
- `multi`: three turns in one conversation (what, group, a yes/no question; premises true for a seeded half,
  a false one names a concept family of the same group).

Concept balance: `variants_per_family` keeps that many names of each family (skin-tone and gender variants of
one concept, mmtool/data/emoji_families.py); without it People & Body holds over half of the images.

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
from mmtool.data.building.emoji_families import family_of, kept_names
from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples, seeded_rng
from mmtool.data.reading.shard_reader import shard_name
from mmtool.errors import MmtoolError

TASKS = ("what", "group", "describe", "yesno", "multi")
IMAGE_DIR = "images"
WHAT_QUESTIONS = ("What is this?", "What does this emoji show?", "Name this emoji.")
GROUP_QUESTION = "Which emoji group does this belong to?"
DESCRIBE_QUESTION = "Describe this image."
# A description's opening: the fields eval-llava also scores one by one (stage3_llm/describe_fields.py).
DESCRIBE_HEAD = "An emoji of {name}, in the {group} group"


def build_instructions(shards: str, out: Path, tasks: str = ",".join(TASKS), seed: int = 0,
                       variants_per_family: int | None = 1) -> dict:
    """Writes out/<split>.json and out/images/; returns conversation counts per split and task.
    `variants_per_family`: names kept per concept family in every split (None: all)."""
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
    if variants_per_family is not None:
        if variants_per_family < 1:
            raise MmtoolError(f"--variants-per-family {variants_per_family}: must be >= 1")
        kept = kept_names({meta["name"] for samples in by_split.values() for _, meta, _ in samples},
                          variants_per_family)
        by_split = {split: [s for s in samples if s[1]["name"] in kept] for split, samples in by_split.items()}
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


class SplitIndex:
    """A split's samples by group and concept family: where yes/no partners and distractors come from."""

    def __init__(self, samples: list[tuple[str, dict, bytes]]):
        self.metas = [meta for _, meta, _ in samples]
        self.families = [family_of(meta["name"]) for meta in self.metas]
        self.groups = sorted({meta["group"] for meta in self.metas})
        self.by_group = defaultdict(list)
        for index, meta in enumerate(self.metas):
            self.by_group[meta["group"]].append(index)

    def name_partner(self, index: int, rng: np.random.Generator) -> int | None:
        """Another family's sample, of the same group when there is one: an image the name is false of."""
        same_group = [i for i in self.by_group[self.metas[index]["group"]] if self.families[i] != self.families[index]]
        pool = same_group or [i for i in range(len(self.metas)) if self.families[i] != self.families[index]]
        return pool[int(rng.integers(len(pool)))] if pool else None

    def group_partner(self, index: int, rng: np.random.Generator) -> int | None:
        """A sample of another group: an image the group is false of."""
        pool = [i for i in range(len(self.metas)) if self.metas[i]["group"] != self.metas[index]["group"]]
        return pool[int(rng.integers(len(pool)))] if pool else None


def split_conversations(samples: list[tuple[str, dict, bytes]], tasks: list[str], rng: np.random.Generator) -> list:
    """Every task for every sample (yes/no twice: see the module doc), shuffled."""
    index = SplitIndex(samples)
    truths = balanced_flags(len(samples), rng) if "multi" in tasks else []
    records = []
    for i, (key, meta, _) in enumerate(samples):
        for task in tasks:
            if task == "yesno":
                records += yesno_records(samples, i, index, rng)
                continue
            turns = TASK_BUILDERS[task](meta, truths[i] if task == "multi" else True, rng, i, index)
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


def yesno_records(samples: list, i: int, index: SplitIndex, rng: np.random.Generator) -> list[dict]:
    """Sample i's premise (its name or its group, a seeded coin) asked of itself (Yes) and of a partner (No);
    none when the split has no partner for either kind (one concept family in one group)."""
    key, meta, _ = samples[i]
    ask_name = rng.random() < 0.5
    partner = index.name_partner(i, rng) if ask_name else index.group_partner(i, rng)
    if partner is None:
        ask_name = not ask_name
        partner = index.name_partner(i, rng) if ask_name else index.group_partner(i, rng)
    if partner is None:
        return []
    question = name_question(readable_name(meta["name"])) if ask_name else group_question(meta["group"])
    partner_key = samples[partner][0]
    return [llava_record(f"{key}:yesno", key, "yesno", [(question, "Yes.")]),
            llava_record(f"{partner_key}:yesno:{key}", partner_key, "yesno", [(question, "No.")])]


def name_question(name: str) -> str:
    return f"Is this {name}?"


def group_question(group: str) -> str:
    return f"Does this belong to the {group} group?"


def what_turn(meta, truth, rng, i, index):
    return [(WHAT_QUESTIONS[int(rng.integers(len(WHAT_QUESTIONS)))], readable_name(meta["name"]))]


def group_turn(meta, truth, rng, i, index):
    return [(GROUP_QUESTION, meta["group"])]


def describe_turn(meta, truth, rng, i, index):
    answer = (DESCRIBE_HEAD.format(name=readable_name(meta["name"]), group=meta["group"])
              + f" ({meta.get('subgroup', '').replace('-', ' ')}).")
    keywords = [k for k in meta.get("keywords", [])[:4] if isinstance(k, str)]
    if keywords:
        answer += f" Keywords: {', '.join(keywords)}."
    return [(DESCRIBE_QUESTION, answer)]


def multi_yesno_turn(meta, truth, rng, i, index):
    """A name premise, true or naming another concept family of the same group."""
    partner = None if truth else index.name_partner(i, rng)
    if partner is None:
        return [(name_question(readable_name(meta["name"])), "Yes.")]
    return [(name_question(readable_name(index.metas[partner]["name"])), "No.")]


def multi_turn(meta, truth, rng, i, index):
    return (what_turn(meta, truth, rng, i, index) + group_turn(meta, truth, rng, i, index)
            + multi_yesno_turn(meta, truth, rng, i, index))


TASK_BUILDERS = {"what": what_turn, "group": group_turn, "describe": describe_turn, "multi": multi_turn}


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda temporary: temporary.write_bytes(data))
