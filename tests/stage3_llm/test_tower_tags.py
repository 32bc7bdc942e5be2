"""Tower tags: the tag line ranks the vocabulary as a float64 reference does (from a noisy embedding for training
conversations when asked), sits right after the image marker in training and generation alike, travels with the
checkpoint, names the tower baseline's own answer first (also over a vocabulary widened with new names), and is
refused without the CLIP embedding token."""
import pytest
import torch
import torch.nn.functional as F

from mmtool.config import load_config
from mmtool.data.building.instructions import GROUP_QUESTION, WHAT_QUESTIONS
from mmtool.data.reading.images import eval_crop, load_image
from mmtool.errors import MmtoolError
from stage1_clip.checkpoint import load_clip
from stage1_clip.evaluate import embed_views
from stage2_projector.chat_format import IGNORE_INDEX, encode_conversation
from stage2_projector.checkpoint import build_vlm, save_vlm
from stage2_projector.config import AlignConfig
from stage2_projector.tower_tags import TowerTags, tag_line, tagged
from stage3_llm.checkpoint import load_finetuned
from stage3_llm.conversations import read_conversations
from stage3_llm.generate import generate_batch, prompt_ids, tag_lines, tower_features
from stage3_llm.start_model import start_bundle, start_file
from stage3_llm.eval_run import EvalOptions, run_eval
from stage3_llm.tower import candidate_embeddings, candidates, extended_tags, name_group_pairs, tower_answers
from stage3_llm.train import finetune
from stage3_llm.training_data import finetune_datasets, set_tower_tags, training_view
from tests.stage1_clip.test_train_e2e import mmtool
from tests.stage2_projector.test_chat_format import smollm2_tokenizer  # noqa: F401 - a fixture
from tests.stage3_llm.test_finetune import config, parts  # noqa: F401 - parts is a fixture


def test_tag_lines_rank_the_vocabulary_as_a_float64_reference():
    generator = torch.Generator().manual_seed(0)
    names, groups = [f"name {i}" for i in range(12)], [f"group {i}" for i in range(4)]
    tags = TowerTags(names, groups, embed_dim=8, name_count=3, group_count=2, layout="lines")
    tags.name_embeddings.copy_(F.normalize(torch.randn(12, 8, generator=generator), dim=-1))
    tags.group_embeddings.copy_(F.normalize(torch.randn(4, 8, generator=generator), dim=-1))
    images = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)  # [5, 8]
    expected = []
    for image in images.double():
        name_order = (tags.name_embeddings.double() @ image).argsort(descending=True)[:3]
        group_order = (tags.group_embeddings.double() @ image).argsort(descending=True)[:2]
        expected.append("Tags:\n" + "\n".join(names[i] for i in name_order)
                        + f"\nGroups: {'; '.join(groups[i] for i in group_order)}.")
    assert tags.lines(images) == expected


def test_noisy_tags_rank_the_noisy_unit_embedding_as_a_float64_reference():
    generator = torch.Generator().manual_seed(2)
    names = [f"name {i}" for i in range(12)]
    tags = TowerTags(names, [], embed_dim=8, name_count=3, group_count=0)
    tags.name_embeddings.copy_(F.normalize(torch.randn(12, 8, generator=generator), dim=-1))
    images = F.normalize(torch.randn(40, 8, generator=generator), dim=-1)  # [40, 8]
    noisy = tags.lines(images, noise=0.5, generator=torch.Generator().manual_seed(7))
    draws = torch.randn(40, 8, generator=torch.Generator().manual_seed(7)).double()  # the same draws, in order
    shifted = F.normalize(images.double() + 0.5 * draws, dim=-1)  # [40, 8]
    expected = [tag_line([names[i] for i in (tags.name_embeddings.double() @ image).argsort(descending=True)[:3]], [])
                for image in shifted]
    assert noisy == expected
    clean = tags.lines(images)
    assert tags.lines(images, noise=0.0, generator=torch.Generator().manual_seed(7)) == clean
    assert sum(a != b for a, b in zip(noisy, clean)) >= 10  # the noise reorders, it is not ignored


def test_groups_through_names_rank_by_their_names_softmax_mass_in_float64():
    generator = torch.Generator().manual_seed(1)
    names, groups = [f"name {i}" for i in range(12)], [f"group {i}" for i in range(4)]
    name_groups = [i % 4 if i != 5 else -1 for i in range(12)]  # name 5 has no group: left out
    tags = TowerTags(names, groups, embed_dim=8, name_count=1, group_count=4, name_groups=name_groups, scale=10.0,
                     layout="lines")
    tags.name_embeddings.copy_(F.normalize(torch.randn(12, 8, generator=generator), dim=-1))
    images = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)  # [5, 8]
    for image, line in zip(images.double(), tags.lines(images)):
        weights = (10.0 * tags.name_embeddings.double() @ image).exp()  # [12]
        mass = [sum(weights[i].item() for i in range(12) if name_groups[i] == g) for g in range(4)]
        order = sorted(range(4), key=lambda g: -mass[g])
        assert line.endswith(f"Groups: {'; '.join(groups[g] for g in order)}.")
    rebuilt = TowerTags.from_record(tags.record(), embed_dim=8)
    assert rebuilt.name_groups == name_groups and rebuilt.scale == 10.0 and rebuilt.layout == "lines"


def test_a_record_without_a_layout_writes_inline_as_models_saved_before_layouts_did():
    record = TowerTags(["cat", "dog"], ["Animals"], embed_dim=8, name_count=2, group_count=1,
                       layout="lines").record()
    del record["layout"]
    assert TowerTags.from_record(record, embed_dim=8).layout == "inline"
    with pytest.raises(MmtoolError, match="layout.*'table'"):
        TowerTags(["cat"], [], embed_dim=8, name_count=1, group_count=0, layout="table")


def contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


@pytest.mark.parametrize("layout, as_answered, as_asked",
                         [("lines", True, False), ("packed", True, False), ("inline", False, True)])
def test_a_tag_at_a_lines_start_has_the_tokens_of_an_answer_that_names_it(
        smollm2_tokenizer, layout, as_answered, as_asked):  # noqa: F811 - smollm2_tokenizer is a fixture
    """SmolLM2's byte-level BPE splits "dango" after a space as " dang"+"o" (as a question names it) and at an
    answer's start as "d"+"ango": inline names make the LLM respell a name it copies, names on lines of their own
    make it compare differently split names with a question's; packed names (no space after ";") split as an
    answer's on one line. Groups keep the form a question asks them in, in every layout (docs/stage23_style_shift.md,
    K1)."""
    names = ["dango", "videocassette", "carpentry saw"]
    line = tag_line(names, ["Food & Drink"], layout)
    for name in names:
        turns = [{"role": "user", "content": tagged(f"<image>\nIs this {name}?", line)},
                 {"role": "assistant", "content": name}]
        ids, labels = encode_conversation(smollm2_tokenizer, turns, "<image>", 1)
        answer = [label for label in labels if label != IGNORE_INDEX][:-1]  # the name, without the end of turn
        prompt = ids[:labels.index(answer[0])]
        tags = smollm2_tokenizer(line, add_special_tokens=False)["input_ids"]
        asked = smollm2_tokenizer(f" {name}", add_special_tokens=False)["input_ids"]
        assert answer != asked and contains(prompt, tags) and contains(prompt, asked)
        assert (contains(tags, answer), contains(tags, asked)) == (as_answered, as_asked), name
    assert contains(tags, smollm2_tokenizer(" Food & Drink", add_special_tokens=False)["input_ids"])


def test_the_line_follows_the_image_marker_and_empty_parts_are_left_out():
    assert tagged("<image>\nIs this a cat?", "Tags: cat.") == "<image>\nTags: cat.\nIs this a cat?"
    assert tagged("And its group?", "Tags: cat.") == "And its group?"
    assert tag_line(["cat", "dog"], [], "inline") == "Tags: cat; dog."
    assert tag_line([], ["Animals"], "inline") == "Groups: Animals."
    assert tag_line(["cat", "dog"], [], "lines") == "Tags:\ncat\ndog"
    assert tag_line([], ["Animals"], "lines") == "Groups: Animals."
    assert tag_line(["cat"], ["Animals", "Pets"], "lines") == "Tags:\ncat\nGroups: Animals; Pets."
    assert tag_line(["cat", "hot dog"], ["Animals"], "packed") == "Tags:cat;hot dog. Groups: Animals."
    assert tag_line([], ["Animals"], "packed") == "Groups: Animals."


def first_tags(line: str) -> tuple[str, str | None]:
    """A lines-layout tag line's first name and first group (None without groups)."""
    rows = line.split("\n")
    groups = rows[-1].removeprefix("Groups: ").rstrip(".").split("; ") if rows[-1].startswith("Groups: ") else [None]
    return rows[1], groups[0]


def tagged_config(parts, *extra):  # noqa: F811 - parts: test_finetune's aligned tiny VLM with the embedding token
    return config(parts, "train.max_steps=2", "data.batch_size=4", "data.feature_cache=null",
                  "model.tower_tags.names=3", "model.tower_tags.groups=2", "model.tower_tags.layout=lines", *extra)


@pytest.mark.slow
def test_tags_are_the_towers_ranking_in_training_and_after_reloading(parts, tmp_path):  # noqa: F811
    cfg = tagged_config(parts)
    finetune(cfg, tmp_path / "run")
    bundle = load_finetuned(tmp_path / "run")
    tags = bundle.model.tower_tags
    clip = load_clip(parts / "clip.pt")
    conversations, source = read_conversations(parts / "instruct" / "train.json")
    vocabulary = candidates(conversations)
    assert tags.names == vocabulary["name"] and tags.groups == vocabulary["group"]
    assert bundle.record["tower_tags"]["name_count"] == 3
    torch.testing.assert_close(tags.name_embeddings, candidate_embeddings(clip, vocabulary["name"], "name"))

    # The first tag is the tower baseline's own naming answer, computed from the CLIP checkpoint alone.
    images = sorted({c.image for c in conversations})
    pixels = torch.stack([bundle.preprocess(source.read(image)) for image in images])
    first_names = [first_tags(line)[0] for line in tag_lines(bundle.model, pixels)]
    pairs = name_group_pairs(conversations)
    assert first_names == tower_answers(clip, [WHAT_QUESTIONS[0]] * len(images), images, source, vocabulary, pairs)
    # Groups are ranked through the names (each image of the file was asked both), as the tower baseline ranks them.
    assert bundle.record["tower_tags"]["name_groups"] == [vocabulary["group"].index(pairs[n]) for n in tags.names]
    first_groups = [first_tags(line)[1] for line in tag_lines(bundle.model, pixels)]
    assert first_groups == tower_answers(clip, [GROUP_QUESTION] * len(images), images, source, vocabulary, pairs)

    # Training text and generation prompts carry the same line after the image.
    train_set, _ = finetune_datasets(cfg, bundle)
    line = tag_lines(bundle.model, pixels[:1])[0]
    trained = [c for c in train_set.conversations if c.image == images[0]]
    assert trained and all(c.turns[0]["content"].startswith(f"<image>\n{line}\n") for c in trained)
    question = "Is this red apple?"
    assert (prompt_ids(bundle.tokenizer, question, bundle.num_image_tokens, line)
            == prompt_ids(bundle.tokenizer, f"<image>\n{line}\n{question}", bundle.num_image_tokens))
    untagged = prompt_ids(bundle.tokenizer, question, bundle.num_image_tokens)
    assert len(prompt_ids(bundle.tokenizer, question, bundle.num_image_tokens, line)) > len(untagged)
    assert generate_batch(bundle.model, bundle.tokenizer, pixels[:2], [question] * 2, bundle.num_image_tokens, 3)

    # eval-llava --tag-set-names: new concepts' names (val.json's) join the vocabulary, ranked as the tower baseline
    # ranks the same names; the model's own entries are kept as they were.
    val_conversations, val_source = read_conversations(parts / "instruct" / "val.json")
    found, val_pairs = candidates(val_conversations), name_group_pairs(val_conversations)
    wider = extended_tags(tags, clip, found["name"], found["group"], val_pairs)
    new = [name for name in found["name"] if name not in tags.names]
    assert new and wider.names == tags.names + new
    torch.testing.assert_close(wider.name_embeddings[:len(tags.names)], tags.name_embeddings)
    torch.testing.assert_close(wider.name_embeddings[len(tags.names):], candidate_embeddings(clip, new, "name"))
    assert wider.name_groups[len(tags.names)] == wider.groups.index(val_pairs[new[0]])
    val_images = sorted({c.image for c in val_conversations})
    val_pixels = torch.stack([bundle.preprocess(val_source.read(image)) for image in val_images])
    own_tags, bundle.model.tower_tags = bundle.model.tower_tags, wider
    wider_first = [first_tags(line)[0] for line in tag_lines(bundle.model, val_pixels)]
    bundle.model.tower_tags = own_tags
    union = {"name": wider.names, "group": wider.groups}
    assert wider_first == tower_answers(clip, [WHAT_QUESTIONS[0]] * len(val_images), val_images, val_source, union, {})
    report = run_eval(tmp_path / "run", parts / "instruct" / "val.json", None,
                      EvalOptions(per_task=1, max_new_tokens=2, blind=(), tower=False, tag_set_names=True))
    assert report["json"]["settings"]["tag_names_added_from_file"] == len(new)
    (tmp_path / "names.txt").write_text("\n".join(new))
    answered = mmtool("chat", "--model", tmp_path / "run", "--image", val_source.path(val_images[0]),
                      "--tag-names", tmp_path / "names.txt", "--max-new-tokens", "2", question)
    assert answered.returncode == 0 and answered.stdout.endswith("\n")

    # model.tower_tags.train_noise reranks the training conversations' tags only: validation keeps the clean line.
    noisy_train, noisy_val = finetune_datasets(tagged_config(parts, "model.tower_tags.train_noise=1.0"), bundle)
    _, val_set = finetune_datasets(cfg, bundle)
    assert [c.turns for c in noisy_val.conversations] == [c.turns for c in val_set.conversations]
    changed = [a.turns != b.turns for a, b in zip(noisy_train.conversations, train_set.conversations)]
    assert len(changed) == len(train_set.conversations) and sum(changed) >= len(changed) // 4

    # data.style_views: a training image's pixels and its tags are both of its one styled view; val stays as is.
    styled_cfg = tagged_config(parts, "data.style_views.grayscale=1.0", "data.style_views.contour=1.0")
    styled_train, styled_val = finetune_datasets(styled_cfg, bundle)
    assert [c.turns for c in styled_val.conversations] == [c.turns for c in val_set.conversations]
    view = training_view(styled_cfg.data.style_views, bundle.record["vision"]["image_size"], styled_cfg.train.seed)
    index = next(i for i, c in enumerate(styled_train.conversations) if c.image == images[0])
    styled_pixels = view(load_image(source.read(images[0])))
    assert torch.equal(styled_train[index]["pixel_values"], styled_pixels)
    styled_line = tag_lines(bundle.model, styled_pixels[None])[0]
    assert styled_train.conversations[index].turns[0]["content"].startswith(f"<image>\n{styled_line}\n")
    assert not torch.equal(styled_pixels, pixels[0])


@pytest.mark.slow
def test_tags_in_style_views_are_the_tower_baselines_answers_in_those_views(parts):  # noqa: F811
    views = ["plain", "outline", "contour"]
    cfg = tagged_config(parts, f"model.tower_tags.style_views=[{','.join(views)}]")
    bundle = start_bundle(cfg, start_file(cfg))
    set_tower_tags(cfg, bundle)
    assert bundle.record["tower_tags"]["style_views"] == views
    conversations, source = read_conversations(parts / "instruct" / "train.json")
    images = sorted({c.image for c in conversations})
    pixels = torch.stack([bundle.preprocess(source.read(image)) for image in images])  # [I, 3, S, S]
    clip = load_clip(parts / "clip.pt")
    clip.config.eval.style_views = views
    vocabulary, pairs = candidates(conversations), name_group_pairs(conversations)
    lines = tag_lines(bundle.model, pixels, tower_features(bundle.model, pixels))  # generation's call: pixels read
    assert [first_tags(line)[0] for line in lines] == tower_answers(clip, [WHAT_QUESTIONS[0]] * len(images), images,
                                                                    source, vocabulary, pairs)
    # The embedding behind the tags: the CLIP's own mean over the views of each image's crop, not its plain crop.
    crops = [eval_crop(load_image(source.read(image)), clip.config.model.vision.image_size) for image in images]
    expected = embed_views(clip.model.eval(), crops, views, batch_size=3)  # [I, D]
    torch.testing.assert_close(bundle.model.tag_embeddings(pixels), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, embed_views(clip.model, crops, ["plain"], batch_size=3), atol=1e-3)
    with pytest.raises(MmtoolError, match="from an image's pixels"):
        bundle.model.tag_lines(tower_features(bundle.model, pixels))
    assert TowerTags.from_record(bundle.record["tower_tags"], 8).style_views == views


@pytest.mark.slow
def test_tags_off_take_away_a_base_models_tags(parts, tmp_path):  # noqa: F811
    finetune(tagged_config(parts), tmp_path / "tagged")
    cfg = tagged_config(parts, f"model.base={tmp_path / 'tagged'}", "model.tower_tags.names=0",
                        "model.tower_tags.groups=0")
    bundle = start_bundle(cfg, start_file(cfg))
    assert bundle.model.tower_tags is not None
    set_tower_tags(cfg, bundle)
    assert bundle.model.tower_tags is None and "tower_tags" not in bundle.record


@pytest.mark.slow
def test_a_negative_training_noise_is_refused(parts):  # noqa: F811
    cfg = tagged_config(parts, "model.tower_tags.train_noise=-0.1")
    with pytest.raises(MmtoolError, match=r"model.tower_tags.train_noise: .* got -0.1"):
        set_tower_tags(cfg, start_bundle(cfg, start_file(cfg)))


@pytest.mark.slow
def test_tags_need_the_clip_embedding_token(parts, tmp_path):  # noqa: F811
    plain = build_vlm(load_config(AlignConfig, None, [f"model.llm={parts / 'llm'}"]), parts / "clip.pt")
    save_vlm(tmp_path / "plain" / "vlm.pt", plain.record, plain.model.state_dict())
    cfg = tagged_config(parts, f"model.base={tmp_path / 'plain'}")
    with pytest.raises(MmtoolError, match="model.tower_tags needs the CLIP embedding token"):
        set_tower_tags(cfg, start_bundle(cfg, start_file(cfg)))
