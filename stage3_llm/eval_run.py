"""`mmtool eval-llava` end to end: read and sample the conversations, answer them, add the baselines, score, and
lay out the table and the JSON report."""
from dataclasses import dataclass
from pathlib import Path

from mmtool.checkpoint import file_sha256, load_model
from mmtool.precision import answering_precision, dtype_of
from stage2_projector.checkpoint import KIND, resolve_model_file
from stage3_llm.blind import BLIND_IMAGES
from stage3_llm.checkpoint import load_for_answering
from stage3_llm.conversations import read_conversations
from stage3_llm.evaluate import add_blind_answers, add_tower_answers, answer_conversations, format_table, score
from stage3_llm.task_sample import sample_per_task
from stage3_llm.tower import (NAME_TEMPLATE, YESNO_RULE, candidates, extended_tags, load_tower, name_group_pairs,
                              require_tower_tags)


@dataclass
class EvalOptions:
    per_task: int | None = 300  # None = every conversation
    seed: int = 0
    limit: int | None = None  # only the file's first N conversations, before the per-task choice
    max_new_tokens: int = 32
    batch_size: int = 16
    blind: tuple[str, ...] = BLIND_IMAGES  # the blind copies' images: "blank", "shuffled", both or none
    tower: bool = True
    vision: Path | None = None  # the tower's clip.pt instead of the recorded path
    any_vision: bool = False  # accept a vision file whose sha256 differs from the record
    precision: str = "bf16"  # the LLM's, when answering (mmtool/precision.py)
    tag_set_names: bool = False  # the file's names and groups join the model's tag vocabulary (tower.extended_tags)

    def __post_init__(self):
        dtype_of(self.precision)  # refused before anything loads


def run_eval(model: Path, data: Path, image_folder: Path | None, options: EvalOptions) -> dict:
    """{"table": str, "json": report}: per-task scores with their baselines, and every answer."""
    conversations, source = read_conversations(data, image_folder)
    in_file = conversations[:options.limit]
    chosen = sample_per_task(in_file, options.per_task, options.seed)
    # The tower is checked before the (slow) LLM loads, so a wrong --clip fails at once.
    record = load_model(resolve_model_file(model), KIND)["config"]
    if options.tag_set_names:
        require_tower_tags(record, model, "--tag-set-names")
    wants_tower = options.tower or options.tag_set_names
    clip = load_tower(record, str(model), options.vision, options.any_vision) if wants_tower else None
    bundle = load_for_answering(model, precision=options.precision)
    added_names = add_set_names(bundle, clip, in_file) if options.tag_set_names else 0
    results = answer_conversations(bundle, chosen, source, options.max_new_tokens, options.batch_size)
    add_blind_answers(results, bundle, chosen, source, options.max_new_tokens, options.batch_size, options.seed,
                      str(data), options.blind)
    if options.tower:
        add_tower_answers(results, clip, in_file, source)
    scores = score(results)
    report = {"scores": scores, "answers": results,
              "settings": {"model": str(model), "data": str(data), "conversations_in_file": len(in_file),
                           "per_task": options.per_task, "seed": options.seed, "limit": options.limit,
                           "max_new_tokens": options.max_new_tokens, "batch_size": options.batch_size,
                           "precision": answering_precision(options.precision),
                           "tag_names_added_from_file": added_names},
              "baselines": {"majority": "the share of the task's commonest reference (exact match)",
                            "blind": blind_description(options), "tower": None}}
    if options.tower:
        path = Path(options.vision or bundle.record["vision"]["checkpoint"])
        digest = file_sha256(path)
        choices = candidates(in_file)
        report["baselines"]["tower"] = {
            "checkpoint": str(path), "sha256": digest, "matches_record": digest == bundle.record["vision"]["sha256"],
            "names": len(choices["name"]), "groups": len(choices["group"]), "name_prompt": NAME_TEMPLATE,
            "group_templates": clip.config.eval.templates, "yesno_rule": YESNO_RULE}
    return {"table": format_table(scores), "json": report}


def add_set_names(bundle, clip, conversations: list) -> int:
    """Extends the model's tag vocabulary with the conversations' names and groups; how many names it added."""
    tags = bundle.model.tower_tags
    found = candidates(conversations)
    bundle.model.tower_tags = extended_tags(tags, clip, found["name"], found["group"], name_group_pairs(conversations))
    return len(bundle.model.tower_tags.names) - len(tags.names)


def blind_description(options: EvalOptions) -> dict | None:
    described = {"blank": "the normalised mean (grey) image",
                 "shuffled": f"another conversation's image of the set (seeded derangement, seed {options.seed})"}
    return {name: described[name] for name in options.blind} or None
