"""eval-llava on a tiny random VLM: the blind baselines really show a blank / another image, the tower baseline
equals a naive CLIP computation, a mismatching tower is refused, and the command prints the table."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmtool.cpu_features import bf16_to_fp32
from mmtool.data.building.instructions import GROUP_QUESTION, WHAT_QUESTIONS
from mmtool.data.reading.images import eval_crop, load_image
from mmtool.errors import MmtoolError
from mmtool.pipeline import headline
from stage1_clip.checkpoint import load_clip
from stage1_clip.style_views import view_pixels
from stage3_llm.blind import BLANK
from stage3_llm.checkpoint import load_finetuned
from stage3_llm.conversations import read_conversations
from stage3_llm.evaluate import add_blind_answers, answer_conversations
from stage3_llm.generate import generate
from stage3_llm.tower import NAME_TEMPLATE, candidates, load_tower, name_group_pairs, tower_answers
from tests.stage1_clip.test_train_e2e import mmtool
from tests.helpers.tiny_vlm import save_tiny_clip, save_tiny_vlm

pytestmark = pytest.mark.slow

NAMES = ["grinning face", "red apple", "rocket", "cat face", "banana", "green heart"]
GROUPS = ["Smileys & Emotion", "Food & Drink", "Travel & Places"]


def write_conversations(folder, images: int = 6) -> str:
    """Every task for `images` coloured squares; yes/no premises alternate true / false, names / groups."""
    (folder / "images").mkdir(parents=True)
    records = []
    for index in range(images):
        image = f"images/{index}.png"
        Image.new("RGB", (24, 24), (40 * index, 255 - 40 * index, (90 * index) % 256)).save(folder / image)
        name, group = NAMES[index % len(NAMES)], GROUPS[index % len(GROUPS)]
        other_name, other_group = NAMES[(index + 1) % len(NAMES)], GROUPS[(index + 1) % len(GROUPS)]
        truth = index % 2 == 0
        premise = (f"Is this {name if truth else other_name}?" if index % 4 < 2
                   else f"Does this belong to the {group if truth else other_group} group?")
        yes_no = "Yes." if truth else "No."
        what = WHAT_QUESTIONS[index % len(WHAT_QUESTIONS)]
        turns = {"what": [(what, name)], "group": [(GROUP_QUESTION, group)],
                 "describe": [("Describe this image.", f"An emoji of {name}, in the {group} group.")],
                 "yesno": [(premise, yes_no)], "multi": [(what, name), (GROUP_QUESTION, group), (premise, yes_no)]}
        for task, pairs in turns.items():
            conversation = []
            for turn, (question, answer) in enumerate(pairs):
                conversation += [{"from": "human", "value": f"<image>\n{question}" if turn == 0 else question},
                                 {"from": "gpt", "value": answer}]
            records.append({"id": f"{index}:{task}", "image": image, "task": task, "conversations": conversation})
    path = folder / "val.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_llava")
    save_tiny_vlm(root)
    return root, write_conversations(root / "data")


def test_blind_answers_come_from_a_blank_and_from_another_image(setup):
    root, data = setup
    bundle = load_finetuned(root / "vlm.pt")
    conversations, source = read_conversations(data)
    chosen = [c for c in conversations if c.extra["task"] in ("what", "group")]
    results = answer_conversations(bundle, chosen, source, max_new_tokens=6, batch_size=4)
    add_blind_answers(results, bundle, chosen, source, max_new_tokens=6, batch_size=4, seed=0, where=str(data))

    size, n = bundle.record["vision"]["image_size"], bundle.num_image_tokens
    group_answers = {r["answer"] for r in results if r["task"] == "group"}
    assert len(group_answers) > 1, "the tiny model's answer should depend on its image"
    for r in results:
        blank = generate(bundle.model, bundle.tokenizer, torch.zeros(3, size, size), r["question"], n, 6)
        assert r["blind_blank"]["image"] == BLANK
        assert r["blind_blank"]["answer"] == bundle.tokenizer.decode(blank, skip_special_tokens=True).strip()
        other = r["blind_shuffled"]["image"]
        assert other != r["image"] and other in {c.image for c in chosen}
        shown = generate(bundle.model, bundle.tokenizer, bundle.preprocess(source.read(other)), r["question"], n, 6)
        assert r["blind_shuffled"]["answer"] == bundle.tokenizer.decode(shown, skip_special_tokens=True).strip()
    # Blank: one answer per question, whatever the image; the model's own answers to that question differ.
    assert len({r["blind_blank"]["answer"] for r in results if r["task"] == "group"}) == 1
    same_image = [r["blind_shuffled"]["image"] for r in results if r["image"] == results[0]["image"]]
    assert len(set(same_image)) == 1  # conversations sharing an image share its replacement


@torch.no_grad()
def naive_tower_answer(clip, image_bytes: bytes, question: str, names: list[str], groups: list[str],
                       pairs: dict[str, str]) -> str | None:
    """One image, one candidate at a time, cosine similarity by hand; a group scores the sum of exp(scale x
    similarity) over its names (`pairs`)."""
    crop = eval_crop(load_image(image_bytes), clip.config.model.vision.image_size)
    views = clip.config.eval.style_views or ["plain"]  # the CLIP's own test-time views, one at a time
    image_emb = F.normalize(sum(clip.model.encode_image(view_pixels(crop, view)[None])[0] for view in views), dim=-1)

    def text(prompts):
        ids, mask = clip.tokenize(prompts)
        return F.normalize(clip.model.encode_text(ids, mask).mean(0), dim=-1)

    def nearest(choices, prompts_of):
        return max(choices, key=lambda choice: float(image_emb @ text(prompts_of(choice))))

    def by_name():
        return nearest(names, lambda name: [NAME_TEMPLATE.format(name)])

    scale = clip.model.temperature_scale().item()

    def by_group():
        if not pairs:  # no name-group pairs: each group's prompt ensemble, as eval-clip
            def prompts(group):
                return [template.format(group) for template in clip.config.eval.templates]
            return nearest(groups, prompts)

        def mass(group):
            return sum(math.exp(scale * float(image_emb @ text([NAME_TEMPLATE.format(name)])))
                       for name in names if pairs[name] == group)
        return max(groups, key=mass)

    text_only = question.removeprefix("<image>\n")
    if text_only in WHAT_QUESTIONS:
        return by_name()
    if text_only == GROUP_QUESTION:
        return by_group()
    if text_only.startswith("Does this belong to the "):
        premise = text_only.removeprefix("Does this belong to the ").removesuffix(" group?")
        return "Yes." if by_group() == premise else "No."
    if text_only.startswith("Is this "):
        return "Yes." if by_name() == text_only.removeprefix("Is this ").removesuffix("?") else "No."
    return None


def test_tower_answers_equal_a_naive_clip_computation(setup):
    root, data = setup
    clip = load_clip(root / "clip.pt")
    conversations, source = read_conversations(data)
    choices, pairs = candidates(conversations), name_group_pairs(conversations)
    assert choices == {"name": sorted(NAMES), "group": sorted(GROUPS)}
    assert pairs == {name: GROUPS[index % len(GROUPS)] for index, name in enumerate(NAMES)}
    questions = [c.turns[0]["content"] for c in conversations]
    answers = tower_answers(clip, questions, [c.image for c in conversations], source, choices, pairs)
    expected = [naive_tower_answer(clip, source.read(c.image), q, choices["name"], choices["group"], pairs)
                for c, q in zip(conversations, questions)]
    assert answers == expected
    by_prompts = tower_answers(clip, questions, [c.image for c in conversations], source, choices, {})
    assert by_prompts == [naive_tower_answer(clip, source.read(c.image), q, choices["name"], choices["group"], {})
                          for c, q in zip(conversations, questions)]
    assert {a for a, c in zip(answers, conversations) if c.extra["task"] == "describe"} == {None}
    assert {a for a, c in zip(answers, conversations) if c.extra["task"] == "yesno"} <= {"Yes.", "No."}
    assert len({a for a, c in zip(answers, conversations) if c.extra["task"] == "what"}) > 1
    clip.config.eval.style_views = ["plain", "outline", "contour"]  # the tower reads images as eval-clip does
    assert tower_answers(clip, questions, [c.image for c in conversations], source, choices, pairs) == [
        naive_tower_answer(clip, source.read(c.image), q, choices["name"], choices["group"], pairs)
        for c, q in zip(conversations, questions)]


def test_a_tower_other_than_the_recorded_one_is_refused_unless_accepted(setup, tmp_path):
    root, _ = setup
    record = load_finetuned(root / "vlm.pt").record
    other = save_tiny_clip(tmp_path / "other.pt", seed=1)
    with pytest.raises(MmtoolError, match="other.pt: sha256 differs .*--any-clip"):
        load_tower(record, "vlm.pt", other, any_vision=False)
    assert load_tower(record, "vlm.pt", other, any_vision=True).config.model.embed_dim == 32
    with pytest.raises(MmtoolError, match="nope.pt .* not found; pass --clip PATH or --no-tower"):
        load_tower(record, "vlm.pt", tmp_path / "nope.pt", any_vision=False)


def test_the_command_prints_the_table_and_writes_the_report(setup, tmp_path):
    root, data = setup
    out = tmp_path / "eval.json"
    printed = mmtool("eval-llava", "--model", root / "vlm.pt", "--data", data, "--per-task", "4",
                     "--max-new-tokens", "4", "--batch-size", "8", "--json", out).stdout
    table, legend = printed.strip().split("\n\n")
    header, *rows = table.splitlines()
    assert "blank / shuffled: this model shown a grey image / another image" in legend
    assert header.split() == ["task", "n", "exact", "contains", "95%", "CI", "majority", "blank", "shuffled", "tower"]
    assert [row.split()[0] for row in rows] == ["all", "describe", "describe:group", "describe:name", "group", "multi",
                                                "what", "yesno"]
    assert all(row.split()[1] == "4" for row in rows[1:])
    assert rows[1].split()[-1] == "-"  # describe: no tower answer
    report = json.loads(out.read_text())
    assert {"blind_blank", "blind_shuffled"} <= set(report["scores"]["describe:name"])  # scored as the model
    group = report["scores"]["group"]
    assert {"n", "exact_match", "contains_answer", "exact_match_ci", "majority", "blind_blank", "blind_shuffled",
            "tower"} <= set(group)
    assert len(report["answers"]) == 20 and report["baselines"]["tower"]["matches_record"] is True
    # The LLM answers as it trained: bf16, or fp32 where bf16 would be emulated (and so trained in fp32).
    assert report["settings"]["precision"] == ("fp32" if bf16_to_fp32() else "bf16")
    assert "group" in headline(out) and "tower" in headline(out)

    other = save_tiny_clip(tmp_path / "other.pt", seed=1)
    refused = mmtool("eval-llava", "--model", root / "vlm.pt", "--data", data, "--vision", other, check=False)
    assert refused.returncode == 2 and "sha256 differs" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_one_blind_copy_answers_alone_and_an_unknown_one_is_refused(setup, tmp_path):
    root, data = setup
    out = tmp_path / "eval.json"
    printed = mmtool("eval-llava", "--model", root / "vlm.pt", "--data", data, "--per-task", "2", "--max-new-tokens",
                     "4", "--blind", "shuffled", "--no-tower", "--out-json", out).stdout
    group_row = next(line.split() for line in printed.splitlines() if line.startswith("group"))
    assert group_row[-3] == "-" and group_row[-2].endswith("%")  # blank not run, shuffled run
    report = json.loads(out.read_text())
    assert all("blind_shuffled" in r and "blind_blank" not in r for r in report["answers"])
    assert list(report["baselines"]["blind"]) == ["shuffled"]

    refused = mmtool("eval-llava", "--model", root / "vlm.pt", "--data", data, "--blind", "blanc", check=False)
    assert refused.returncode == 2 and "--blind 'blanc': unknown 'blanc'" in refused.stderr
    untagged = mmtool("eval-llava", "--model", root / "vlm.pt", "--data", data, "--tag-set-names", check=False)
    assert untagged.returncode == 2 and "has no tower tags to add names to" in untagged.stderr
