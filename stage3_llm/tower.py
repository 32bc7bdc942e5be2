"""The tower baseline: what the stage-1 CLIP alone answers about the same images, the floor a VLM built on it
should reach.

Questions are recognised by their form (mmtool/data/building/instructions.py); the candidates are the evaluated file's
own names and groups (every reference of a naming or group question and every premise of a yes/no question, over
all the file's conversations, not only the sampled ones):
- naming ("What is this?"): the name whose text is nearest the image = i→t R@1 among the set's names; a name is
  prompted as the emoji data's canonical caption "an emoji of {name}" (what eval-clip's i→t retrieval ranks);
- group ("Which emoji group ...?"): zero-shot classification among the set's groups through the set's names when
  its conversations pair names with groups (an image asked both its name and its group): a group's probability is
  the softmax mass of its names (stage1_clip/evaluate.py, probabilities_from_names; what the tower tags rank by);
  otherwise each group is the mean of the CLIP config's `eval.templates` embeddings (eval-clip's prompt ensemble);
- yes/no ("Is this {name}?" / "Does this belong to the {group} group?"): "Yes." exactly when the premise is the
  tower's own zero-shot answer among the names (resp. groups) above. This needs no threshold, hence no
  calibration data, and is the tower's zero-shot answer put as yes/no: a true premise is confirmed as often as
  the tower recognises the image, a false one is rejected unless the tower mistakes the image for it.
Other questions (describe) have no tower answer.
"""
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mmtool.checkpoint import file_sha256
from mmtool.data.building.instructions import GROUP_QUESTION, WHAT_QUESTIONS
from mmtool.data.reading.images import eval_crop, load_image
from mmtool.data.reading.text_files import utf8_lines
from mmtool.errors import MmtoolError
from stage1_clip.checkpoint import ClipBundle, load_clip
from stage1_clip.evaluate import commonest_labels, embed_texts, embed_views
from stage1_clip.style_views import effective_views
from stage2_projector.llm import IMAGE_TOKEN
from stage2_projector.tower_tags import DEFAULT_LAYOUT, TowerTags
from stage3_llm.conversations import Conversation, ImageSource

NAME_TEMPLATE = "an emoji of {}"
NAME_PREMISE = re.compile(r"Is this (.+)\?")
GROUP_PREMISE = re.compile(r"Does this belong to the (.+) group\?")
YESNO_RULE = "Yes. exactly when the premise is the tower's own nearest name (or group) among the set's"


@dataclass
class TowerQuestion:
    kind: str  # "name" | "group": which candidates the tower chooses among
    premise: str | None  # a yes/no question's claim; None for an open question


def parse_question(question: str) -> TowerQuestion | None:
    """The tower's reading of a question, or None when it cannot answer it."""
    text = question.replace(IMAGE_TOKEN, "").strip()
    if text in WHAT_QUESTIONS:
        return TowerQuestion("name", None)
    if text == GROUP_QUESTION:
        return TowerQuestion("group", None)
    for kind, pattern in (("group", GROUP_PREMISE), ("name", NAME_PREMISE)):
        match = pattern.fullmatch(text)
        if match:
            return TowerQuestion(kind, match.group(1))
    return None


def candidates(conversations: list[Conversation]) -> dict[str, list[str]]:
    """{"name": [...], "group": [...]}: every name and group the file's questions ask about or answer with."""
    found = {"name": set(), "group": set()}
    for conversation in conversations:
        if conversation.image is None:
            continue
        turns = conversation.turns
        for question, answer in zip(turns[0::2], turns[1::2]):
            parsed = parse_question(question["content"])
            if parsed is not None:
                found[parsed.kind].add(parsed.premise if parsed.premise is not None else answer["content"])
    return {kind: sorted(values) for kind, values in found.items()}


def name_group_pairs(conversations: list[Conversation]) -> dict[str, str]:
    """{name: group} from images asked both: a name and a group each answered (or confirmed "Yes.") for one image;
    a name seen with several groups keeps its commonest."""
    per_image = defaultdict(lambda: {"name": set(), "group": set()})
    for conversation in conversations:
        if conversation.image is None:
            continue
        turns = conversation.turns
        for question, answer in zip(turns[0::2], turns[1::2]):
            parsed = parse_question(question["content"])
            if parsed is None or (parsed.premise is not None and answer["content"] != "Yes."):
                continue
            per_image[conversation.image][parsed.kind].add(parsed.premise or answer["content"])
    return commonest_labels((next(iter(found["name"])), next(iter(found["group"])))
                            for found in per_image.values() if len(found["name"]) == 1 and len(found["group"]) == 1)


def group_indices(names: list[str], groups: list[str], pairs: dict[str, str]) -> list[int] | None:
    """Each name's index in `groups` (-1: no known group among them); None when no name has one."""
    indices = [groups.index(pairs[name]) if pairs.get(name) in groups else -1 for name in names]
    return indices if any(index >= 0 for index in indices) else None


def extended_tags(tags: TowerTags, clip: ClipBundle, names: list[str], groups: list[str],
                  pairs: dict[str, str]) -> TowerTags:
    """The model's tags with `names` and `groups` added to its vocabulary, embedded by the same CLIP text tower
    (`pairs`, {name: group}, places new names in groups): a concept stage 3 never trained on can then be tagged,
    as the tower baseline ranks the evaluated file's own names. The model's own entries keep their embeddings and
    groups."""
    new_names = [name for name in dict.fromkeys(names) if name not in tags.names]
    new_groups = [group for group in dict.fromkeys(groups) if group not in tags.groups]
    all_names, all_groups = tags.names + new_names, tags.groups + new_groups
    name_groups = None
    if tags.name_groups:
        own = {name: tags.groups[group] for name, group in zip(tags.names, tags.name_groups) if group >= 0}
        name_groups = group_indices(all_names, all_groups, {**pairs, **own})
    extended = TowerTags(all_names, all_groups, tags.name_embeddings.shape[1], tags.name_count, tags.group_count,
                         name_groups, tags.scale, tags.layout, tags.style_views)
    extended.name_embeddings[:len(tags.names)] = tags.name_embeddings
    extended.group_embeddings[:len(tags.groups)] = tags.group_embeddings
    if new_names:
        extended.name_embeddings[len(tags.names):] = candidate_embeddings(clip, new_names, "name")  # [V_new, D]
    if new_groups:
        extended.group_embeddings[len(tags.groups):] = candidate_embeddings(clip, new_groups, "group")  # [G_new, D]
    return extended.to(tags.name_embeddings.device)


def require_tower_tags(record: dict, model: Path, option: str) -> None:
    """Refuses `option`, which adds names to the tag vocabulary, for a model saved without tower tags (its record,
    read before the slow LLM loads)."""
    if not record.get("tower_tags"):
        raise MmtoolError(f"{option}: {model} has no tower tags to add names to (model.tower_tags)")


def read_names(path: Path) -> list[str]:
    """A name list file: one name per line, blank lines skipped."""
    try:
        names = [line.strip() for _, line in utf8_lines(path) if line.strip()]  # bad UTF-8: file:line named
    except OSError as err:
        raise MmtoolError(f"{path}: cannot read the name list ({err.strerror})") from None
    if not names:
        raise MmtoolError(f"{path}: the name list holds no name (one per line)")
    return names


def load_tower(record: dict, model_path: str, vision: str | Path | None, any_vision: bool) -> ClipBundle:
    """The stage-1 CLIP the VLM was aligned on (path from the record unless `vision`), checked by sha256."""
    path = Path(vision or record["vision"]["checkpoint"])
    if not path.is_file():
        raise MmtoolError(f"{model_path}: its vision checkpoint {path} (vision.checkpoint in its record) is not "
                          "found; pass --clip PATH or --no-tower")
    if not any_vision and file_sha256(path) != record["vision"]["sha256"]:
        raise MmtoolError(f"{path}: sha256 differs from the one {model_path} was aligned on "
                          f"({record['vision']['sha256'][:12]}); pass --any-clip to use it anyway")
    return load_clip(path)


@torch.no_grad()
def tower_answers(clip: ClipBundle, questions: list[str], images: list[str], source: ImageSource,
                  choices: dict[str, list[str]], pairs: dict[str, str]) -> list[str | None]:
    """The tower's answer to each (question, image) pair: a name, a group, "Yes." / "No.", or None. `pairs`
    ({name: group}, name_group_pairs) ranks groups through the names."""
    parsed = [parse_question(question) for question in questions]
    answerable = [index for index, item in enumerate(parsed) if item is not None]
    answers: list[str | None] = [None] * len(questions)
    if not answerable:
        return answers
    distinct = sorted({images[index] for index in answerable})
    row_of = {image: row for row, image in enumerate(distinct)}
    kinds = {parsed[index].kind for index in answerable}
    for kind in kinds:
        if not choices[kind]:
            raise MmtoolError(f"the tower baseline found no {kind}s to choose among in the evaluated file")
    predicted = {kind: kind_scores.argmax(1)  # [I] index of the tower's top candidate
                 for kind, kind_scores in tower_scores(clip, distinct, source, choices, pairs, kinds).items()}
    for index in answerable:
        item = parsed[index]
        choice = choices[item.kind][int(predicted[item.kind][row_of[images[index]]])]
        answers[index] = choice if item.premise is None else ("Yes." if choice == item.premise else "No.")
    return answers


@torch.no_grad()
def tower_scores(clip: ClipBundle, images: list[str], source: ImageSource, choices: dict[str, list[str]],
                 pairs: dict[str, str], kinds: set[str]) -> dict[str, torch.Tensor]:
    """{kind: [I, C]}: each image's score against each of `choices[kind]` ("name", "group"), the image read in the
    CLIP's own eval.style_views as eval-clip reads it (plain: the crop alone), groups ranked through the names when
    `pairs` ({name: group}) places them."""
    crops = [eval_crop(load_image(source.read(image)), clip.config.model.vision.image_size) for image in images]
    image_emb = embed_views(clip.model.inference_copy(), crops, clip.config.eval.style_views,
                            clip.config.eval.batch_size)  # [I, D]
    name_groups = group_indices(choices["name"], choices["group"], pairs) if "group" in kinds else None
    tags = candidate_tags(clip, choices, kinds | ({"name"} if name_groups else set()), name_groups)
    return {kind: image_emb @ tags.name_embeddings.T if kind == "name" else tags.group_scores(image_emb)
            for kind in kinds}


def candidate_embeddings(clip: ClipBundle, names: list[str], kind: str) -> torch.Tensor:
    """[C, D] normalised text embeddings: names as captions, groups as eval-clip's template ensemble."""
    batch_size = clip.config.eval.batch_size
    if kind == "name":
        return embed_texts(clip.model, clip.tokenize, [NAME_TEMPLATE.format(name) for name in names], batch_size)
    templates = clip.config.eval.templates
    prompts = [template.format(name.replace("-", " ").replace("_", " ")) for name in names for template in templates]
    per_prompt = embed_texts(clip.model, clip.tokenize, prompts, batch_size)  # [C * K, D]
    return F.normalize(per_prompt.view(len(names), len(templates), -1).mean(1), dim=-1)  # [C, D]


def candidate_tags(clip: ClipBundle, vocabulary: dict[str, list[str]], kinds: set[str],
                   name_groups: list[int] | None, names: int = 0, groups: int = 0,
                   layout: str = DEFAULT_LAYOUT, style_views: list[str] = ()) -> TowerTags:
    """TowerTags over `vocabulary` with the `kinds` ("name", "group") embedded as candidates, groups ranked through
    the names when `name_groups` is given."""
    tags = TowerTags(vocabulary["name"], vocabulary["group"], clip.config.model.embed_dim, names, groups,
                     name_groups, clip.model.temperature_scale().item(), layout, style_views)
    for kind in kinds:
        buffer = tags.name_embeddings if kind == "name" else tags.group_embeddings
        buffer.copy_(candidate_embeddings(clip, vocabulary[kind], kind))  # [C, D]
    return tags


def build_tower_tags(clip: ClipBundle, conversations: list[Conversation], names: int, groups: int,
                     layout: str = DEFAULT_LAYOUT, style_views: list[str] | None = None) -> TowerTags:
    """Tags over every name and group the conversations ask about or answer with, embedded and ranked as the tower
    baseline ranks its candidates (so a tag line lists the tower baseline's own top answers); images read in
    `style_views`, by default the CLIP's eval.style_views as the tower baseline reads them."""
    vocabulary = candidates(conversations)
    if not vocabulary["name"] and not vocabulary["group"]:
        raise MmtoolError(f"model.tower_tags: {conversations[0].where.split('#')[0]} holds no naming or group "
                          "question to take the tags' names and groups from")
    name_groups = group_indices(vocabulary["name"], vocabulary["group"], name_group_pairs(conversations))
    kinds = {kind for kind in ("name", "group") if vocabulary[kind]}
    views = effective_views(clip.config.eval.style_views if style_views is None else style_views)
    return candidate_tags(clip, vocabulary, kinds, name_groups, names, groups, layout, views)
