"""Stage 3 on a tiny random VLM (ViT 32 px + 2-layer Llama): LoRA training, saved adapter, merge parity, resume,
further tuning, refusals, and the answer-accuracy metrics."""
import json
import shutil

import pytest
import torch

from mmtool.config import load_config
from mmtool.data.building.instructions import build_instructions
from mmtool.data.reading.images import eval_transform
from mmtool.errors import MmtoolError
from stage2_projector.checkpoint import build_vlm, save_vlm
from stage2_projector.config import AlignConfig
from stage3_llm.checkpoint import load_finetuned
from stage3_llm.config import FinetuneConfig
from stage3_llm.conversations import ConversationDataset, collate_conversations, read_conversations
from stage3_llm.evaluate import answer_conversations, contains_answer, exact_match, normalize, score
from stage3_llm.start_model import fresh_bundle
from stage3_llm.train import finetune
from tests.helpers.emoji import write_emoji_shards
from tests.helpers.tiny_vlm import save_tiny_clip, save_tiny_llm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """An aligned (projector untrained) tiny VLM checkpoint and instruction data from hand-made emoji shards."""
    root = tmp_path_factory.mktemp("finetune")
    llm = save_tiny_llm(root / "llm")
    # with the CLIP embedding token, as configs/align/emoji.yaml: the tower tags of configs/finetune/emoji.yaml need it
    bundle = build_vlm(load_config(AlignConfig, None, [f"model.llm={llm}", "model.clip_embedding_token=true"]),
                       save_tiny_clip(root / "clip.pt"))
    save_vlm(root / "align" / "vlm.pt", bundle.record, bundle.model.state_dict())
    write_emoji_shards(root / "shards")
    build_instructions(f"{root}/shards/{{train,val}}-*.tar", root / "instruct", tasks="what,group,yesno")
    return root


def config(parts, *extra):
    return load_config(FinetuneConfig, None, [
        f"model.base={parts / 'align'}", f"data.train={parts / 'instruct' / 'train.json'}",
        f"data.val={parts / 'instruct' / 'val.json'}", "data.batch_size=5", "train.lr=1e-2", "train.warmup_steps=1",
        "train.log_every=1", "train.deepspeed=configs/deepspeed/fp32.json", "model.lora.r=4",
        # the random tiny Llama's frozen output layer (init std 0.02) cannot make confident logits: adapt it too
        "model.lora.target_modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head]", *extra])


def records(out, split):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["split"] == split]


def val_loss(bundle, parts):
    conversations, source = read_conversations(parts / "instruct" / "train.json")
    dataset = ConversationDataset(conversations, source, bundle.tokenizer, "<image>", bundle.num_image_tokens,
                                  lambda img: eval_transform(img, 32))
    batch = collate_conversations([dataset[i] for i in range(len(dataset))], bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        return bundle.model.eval()(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                   batch["labels"])


@pytest.fixture(scope="module")
def trained(parts):
    out = parts / "ft"
    # "val" = the training conversations here: the question is whether training fits them
    finetune(config(parts, "train.epochs=20", "train.lr=2e-2", f"data.val={parts / 'instruct' / 'train.json'}"), out)
    return out


def test_loss_falls_and_the_saved_model_reloads_to_the_same_loss(parts, trained):
    val = records(trained, "val")
    assert val[0]["step"] == 0 and val[-1]["answer_loss"] < 0.7 * val[0]["answer_loss"]
    assert (trained / "adapter" / "adapter_config.json").is_file() and (trained / "vlm.pt").is_file()
    bundle = load_finetuned(trained)
    assert type(bundle.model.llm).__name__ == "PeftModelForCausalLM"  # the adapter stays unmerged
    reloaded = val_loss(bundle, parts)["loss"].item()
    assert reloaded == pytest.approx(json.loads((trained / "eval.json").read_text())["answer_loss"], rel=1e-5)


def test_merged_lora_gives_the_same_logits(parts, trained):
    bundle = load_finetuned(trained)
    lora_b = [p for name, p in bundle.model.llm.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # trained: the adapter changes the model
    unmerged = val_loss(bundle, parts)["logits"]
    bundle.model.llm = bundle.model.llm.merge_and_unload()
    merged = val_loss(bundle, parts)["logits"]
    assert (merged - unmerged).abs().max().item() < 1e-5
    base = val_loss(load_finetuned(parts / "align"), parts)["logits"]
    assert (base - unmerged).abs().max().item() > 1e-3


def test_resume_continues_with_the_same_losses(parts, tmp_path):
    """Stop after step 3 (mid-epoch), resume: steps 4-6 match an uninterrupted run exactly (LoRA dropout too)."""
    common = ["train.max_steps=6", "train.save_every=3", "train.keep_states=5", "data.val=null",
              "model.lora.dropout=0.3"]
    full = tmp_path / "full"
    finetune(config(parts, *common), full)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "state" / "step6")
    (resumed / "state" / "latest").write_text("step3")
    (resumed / "metrics.jsonl").write_text("")
    finetune(config(parts, *common), resumed, resume=True)
    expected = {r["step"]: r["loss"] for r in records(full, "train")}
    got = {r["step"]: r["loss"] for r in records(resumed, "train")}
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step


def test_further_tuning_starts_from_the_saved_adapter(parts, trained, tmp_path):
    finetune(config(parts, f"model.base={trained}", "train.max_steps=1", "train.lr=1e-9",
                    f"data.val={parts / 'instruct' / 'train.json'}"), tmp_path / "more")
    before = json.loads((trained / "eval.json").read_text())["answer_loss"]
    assert records(tmp_path / "more", "val")[0]["answer_loss"] == pytest.approx(before, rel=1e-5)


def test_full_finetuning_trains_the_llm(parts, tmp_path):
    out = tmp_path / "full"
    finetune(config(parts, "model.lora.enabled=false", "train.max_steps=3", "train.lr=1e-3",
                    "train.param_groups=[{pattern: '^vision\\.', lr: 0.0}]"), out)
    assert not (out / "adapter").exists()
    tuned = load_finetuned(out).model.llm.state_dict()
    base = load_finetuned(parts / "align").model.llm.state_dict()
    name = "model.layers.0.mlp.down_proj.weight"
    assert (tuned[name] - base[name]).abs().max() > 0


def test_refuses_another_llm_and_a_resume_from_another_base(parts, tmp_path):
    other = save_tiny_llm(tmp_path / "other_llm", seed=1)
    with pytest.raises(MmtoolError, match="trained with LLM"):
        finetune(config(parts, f"model.llm={other}", "train.max_steps=1"), tmp_path / "x")
    out = tmp_path / "y"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"base_sha256": "0" * 64}))
    with pytest.raises(MmtoolError, match="started from another --model"):
        finetune(config(parts, "train.max_steps=1"), out, resume=True)


def test_answers_are_generated_and_scored(parts, trained):
    conversations, source = read_conversations(parts / "instruct" / "val.json")
    results = answer_conversations(load_finetuned(trained), conversations[:4], source, max_new_tokens=4)
    assert len(results) == 4 and all(isinstance(r["answer"], str) for r in results)
    assert score(results)["all"]["n"] == 4


@pytest.mark.parametrize("answer, reference, exact, contains", [
    ("Yes.", "Yes.", True, True),
    (" yes ", "Yes.", True, True),
    ("Yes, it is.", "Yes.", False, True),
    ("No.", "Yes.", False, False),
    ("eyes", "Yes.", False, False),  # whole words only
    ("A red apple!", "red apple", False, True),
    ("Smileys & Emotion", "Smileys & Emotion", True, True),
    ("smileys emotion", "Smileys & Emotion", True, True),
    ("", "cat", False, False),
])
def test_metrics_hand_computed(answer, reference, exact, contains):
    assert exact_match(answer, reference) is exact
    assert contains_answer(answer, reference) is contains


def test_score_by_task():
    results = [{"task": "what", "reference": "cat", "exact_match": True, "contains_answer": True},
               {"task": "what", "reference": "dog", "exact_match": False, "contains_answer": True},
               {"task": "yesno", "reference": "No.", "exact_match": False, "contains_answer": False},
               {"task": "yesno", "reference": "No.", "exact_match": True, "contains_answer": True}]
    scores = score(results)
    rates = {task: {k: row[k] for k in ("n", "exact_match", "contains_answer")} for task, row in scores.items()}
    assert rates == {"all": {"n": 4, "exact_match": 0.5, "contains_answer": 0.75},
                     "what": {"n": 2, "exact_match": 0.5, "contains_answer": 1.0},
                     "yesno": {"n": 2, "exact_match": 0.5, "contains_answer": 0.5}}
    assert scores["yesno"]["majority"]["rate"] == 1.0 and scores["what"]["majority"]["rate"] == 0.5
    assert scores["all"]["majority"]["rate"] == 0.75
    assert normalize("  Flag of  JAPAN! ") == "flag of japan"


def test_single_stage_trains_a_fresh_projector_with_lora_from_the_clip_checkpoint(parts, tmp_path):
    cfg = config(parts, "model.base=null", f"model.vision={parts / 'clip.pt'}", f"model.llm={parts / 'llm'}",
                 "model.align.clip_embedding_token=true", "train.max_steps=3", "data.val=null")
    finetune(cfg, tmp_path / "single")
    bundle = load_finetuned(tmp_path / "single")
    assert bundle.record["vision"]["clip_embedding_token"] and bundle.num_image_tokens == 17  # 4x4 patches + 1
    assert bundle.record["finetune"]["base"] == str(parts / "clip.pt")
    torch.manual_seed(cfg.train.seed)  # the seed finetune starts from (start_run): the same fresh projector
    initial = fresh_bundle(cfg).model.projector.state_dict()
    trained = bundle.model.projector.state_dict()
    assert all((trained[name] - initial[name]).abs().max() > 0 for name in initial)  # the projector learned
    lora_b = [p for name, p in bundle.model.llm.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # and LoRA with it


def test_finetune_needs_an_aligned_model_or_a_clip_checkpoint(parts, tmp_path):
    with pytest.raises(MmtoolError, match="or model.vision a stage-1 clip.pt"):
        finetune(config(parts, "model.base=null"), tmp_path / "none")


def test_per_conversation_weighting_changes_the_training_loss_not_the_val_loss(parts, tmp_path):
    for weighting in ("token", "conversation"):
        finetune(config(parts, "train.max_steps=1", f"train.answer_weighting={weighting}"), tmp_path / weighting)
    token, conversation = (records(tmp_path / w, "train")[0]["loss"] for w in ("token", "conversation"))
    assert abs(token - conversation) > 1e-4  # the same first batch, averaged two ways
    assert (records(tmp_path / "token", "val")[0]["answer_loss"]
            == records(tmp_path / "conversation", "val")[0]["answer_loss"])  # val is always per token
    with pytest.raises(MmtoolError, match="train.answer_weighting: unknown 'sample'"):
        finetune(config(parts, "train.max_steps=1", "train.answer_weighting=sample"), tmp_path / "refused")
