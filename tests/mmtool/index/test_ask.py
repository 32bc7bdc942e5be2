"""`mmtool ask`: the answer is the model's greedy answer about the index's own top hit for the question, from the
original file while it holds the indexed bytes, from the thumbnail once it is gone; the CLI cites the image."""
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmtool.cli import app
from mmtool.index import ImageIndex
from mmtool.index.ask import ask
from stage2_projector.checkpoint import load_vlm
from stage3_llm.generate import generate
from tests.stage1_clip.test_train_e2e import mmtool
from tests.helpers.tiny_vlm import save_tiny_vlm

pytestmark = pytest.mark.slow

COLOURS = [(250, 200, 30), (200, 30, 30), (30, 160, 60), (20, 40, 220), (240, 240, 240)]


def greedy_answer(bundle, image_bytes: bytes, question: str) -> str:
    tokens = generate(bundle.model, bundle.tokenizer, bundle.preprocess(image_bytes), question,
                      bundle.num_image_tokens, max_new_tokens=8)
    return bundle.tokenizer.decode(tokens, skip_special_tokens=True)


def test_ask_answers_about_the_top_hit_and_cites_it(tmp_path):
    bundle = load_vlm(save_tiny_vlm(tmp_path))
    clip_path = tmp_path / "clip.pt"
    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (40, 36), colour).save(images / f"{i}.png")
    index, _ = ImageIndex.build(str(images), clip_path, tmp_path / "index", progress=False)
    question = "a red apple"

    expected_hits = index.search(text=question, k=3)
    result = ask(index, bundle, question, k=3, max_new_tokens=8)
    top = expected_hits[0]
    assert result["image"]["path"] == top.path and result["image"]["image_source"] == "original"
    assert [hit["path"] for hit in result["candidates"]] == [hit.path for hit in expected_hits]
    assert result["answer"] == greedy_answer(bundle, (images / top.path.rsplit("/", 1)[1]).read_bytes(), question)
    second = (images / expected_hits[1].path.rsplit("/", 1)[1]).read_bytes()
    assert result["answer"] != greedy_answer(bundle, second, question)  # the answer does depend on the image

    printed = CliRunner().invoke(app, ["ask", str(tmp_path / "index"), question, "--model", str(tmp_path / "vlm.pt"),
                                       "--max-new-tokens", "8", "-k", "2", "--precision", "fp32"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.startswith(result["answer"] + "\nimage: " + top.path)
    assert expected_hits[1].path in printed.stdout

    thumb_bytes = (tmp_path / "index" / "thumbs" / f"{top.sha256}.jpg").read_bytes()
    (images / top.path.rsplit("/", 1)[1]).unlink()
    as_json = CliRunner().invoke(app, ["ask", str(tmp_path / "index"), question, "--model", str(tmp_path / "vlm.pt"),
                                       "--max-new-tokens", "8", "--json", "--precision", "fp32"])
    from_thumb = json.loads(as_json.stdout)
    assert from_thumb["image"]["image_source"] == "thumbnail" and from_thumb["image"]["path"] == top.path
    assert from_thumb["answer"] == greedy_answer(bundle, thumb_bytes, question)

    no_index = mmtool("ask", tmp_path / "nowhere", question, "--model", tmp_path / "vlm.pt", check=False)
    assert no_index.returncode == 2 and no_index.stderr.startswith("mmtool: error: ")
    assert "nowhere: not an mmtool image index" in no_index.stderr and no_index.stderr.count("\n") == 1
    no_model = mmtool("ask", tmp_path / "index", question, "--model", tmp_path / "none.pt", check=False)
    assert no_model.returncode == 2 and no_model.stderr == f"mmtool: error: --model {tmp_path / 'none.pt'}: not found\n"
