"""Image index: retrieval through FAISS equals stage1_clip.evaluate's figure; add, duplicates, unreadable files,
model identity; text and image search from the CLI and the Python API."""
import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from mmtool.cli import app
from mmtool.data.reading.loader import make_eval_set, resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.errors import MmtoolError
from mmtool.index import ImageIndex
from stage1_clip.checkpoint import load_clip
from stage1_clip.evaluate import evaluate_clip
from tests.helpers.tiny_clip import write_tiny_clip


def run(*args) -> str:
    result = CliRunner().invoke(app, list(map(str, args)))
    if result.exception:
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout  # the progress bar and skip reports go to stderr


@pytest.fixture(scope="module")
def val_index(emoji_shards, tiny_clip_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "val"
    run("index", "build", str(emoji_shards / "val-*.tar"), "--model", tiny_clip_checkpoint, "--out", out)
    return out


@pytest.fixture(scope="module")
def image_files(emoji_shards, tmp_path_factory):
    """The first 8 val emoji as PNG files, with their captions."""
    folder = tmp_path_factory.mktemp("images")
    files = []
    for i, raw in zip(range(8), parsed_samples(resolve_shards(str(emoji_shards / "val-*.tar")), Counter())):
        path = folder / f"{i:02d}_{raw.key}.png"
        path.write_bytes(raw.image)
        files.append((path, raw.captions[0]))
    return files


@pytest.mark.slow
def test_text_to_image_recall_through_the_index_equals_evaluate(emoji_shards, tiny_clip_checkpoint, val_index):
    bundle = load_clip(tiny_clip_checkpoint)
    eval_set = make_eval_set(resolve_shards(str(emoji_shards / "val-*.tar")), 32)
    expected = evaluate_clip(bundle.model, bundle.tokenize, eval_set, bundle.config.eval.templates)
    index = ImageIndex.open(val_index)
    assert len(index.items) == len(eval_set["caption"]) > 50  # every val image indexed, none a duplicate
    for k in (1, 5):
        hits = [index.search(text=caption, k=k) for caption in eval_set["caption"]]
        found_count = sum(any(h.caption == caption for h in found) for found, caption in zip(hits, eval_set["caption"]))
        # evaluate_clip averages in float32: compare query counts, which are exact
        assert found_count == round(expected[f"text_to_image_R@{k}"] * len(hits))


def test_add_skips_duplicates_and_unreadable_and_keeps_old_vectors(tiny_clip_checkpoint, image_files, tmp_path):
    folder = tmp_path / "first"
    folder.mkdir()
    for path, _ in image_files[:5]:
        (folder / path.name).write_bytes(path.read_bytes())
    index, report = ImageIndex.build(str(folder), tiny_clip_checkpoint, tmp_path / "index", progress=False)
    assert report.added == 5 and len(index.items) == 5
    old_vectors = index.vectors.reconstruct_n(0, 5)  # [5, D]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    lines = [{"image": str(p), "caption": c, "style": "noto"} for p, c in image_files[5:]]
    lines += [{"image": str(image_files[0][0]), "caption": "same bytes again"},
              {"image": "broken.png", "caption": "corrupt"}, {"image": "missing.png", "caption": "gone"}]
    listing = tmp_path / "more.jsonl"
    listing.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = run("index", "add", tmp_path / "index", listing)
    assert json.loads(output) == {"added": 3, "duplicates": 1, "unreadable": 2}
    reopened = ImageIndex.open(tmp_path / "index")
    assert len(reopened.items) == reopened.vectors.ntotal == 8
    assert np.array_equal(reopened.vectors.reconstruct_n(0, 5), old_vectors)
    assert reopened.items[5]["caption"] == image_files[5][1] and reopened.items[5]["fields"] == {"style": "noto"}
    assert all((tmp_path / "index" / "thumbs" / f"{item['sha256']}.jpg").is_file() for item in reopened.items)


def test_another_model_cannot_add_or_search(emoji_shards, val_index, image_files, tmp_path):
    other = write_tiny_clip(emoji_shards, tmp_path / "other.pt", seed=1)
    with pytest.raises(MmtoolError, match="different weights.*cannot be mixed"):
        ImageIndex.open(val_index).add(str(image_files[0][0].parent), other)
    with pytest.raises(MmtoolError, match="different weights"):
        ImageIndex.open(val_index, model=other)


@pytest.mark.slow
def test_onnx_export_is_the_same_model(tiny_clip_checkpoint, image_files, tmp_path):
    """Built with the ONNX export, grown with the checkpoint: one identity, vectors within 1e-4."""
    run("export-clip", tiny_clip_checkpoint, "--format", "onnx", "--out", tmp_path / "onnx")
    folder = image_files[0][0].parent
    index, _ = ImageIndex.build(str(folder), tmp_path / "onnx", tmp_path / "index", progress=False)
    torch_index, _ = ImageIndex.build(str(folder), tiny_clip_checkpoint, tmp_path / "index_torch", progress=False)
    assert np.allclose(index.vectors.reconstruct_n(0, 8), torch_index.vectors.reconstruct_n(0, 8), atol=1e-4)
    assert index.add(str(folder), tiny_clip_checkpoint, progress=False).duplicates == 8


def test_search_cli_text_and_image_table_and_json(val_index, image_files):
    path, caption = image_files[3]
    by_image = json.loads(run("search", val_index, "--image", path, "-k", "3", "--json"))
    assert len(by_image) == 3 and by_image[0]["caption"] == caption
    assert by_image[0]["score"] == pytest.approx(1, abs=1e-5)
    assert [hit["rank"] for hit in by_image] == [1, 2, 3]
    table = run("search", val_index, "--text", caption, "-k", "2")
    assert table.splitlines()[0].split() == ["rank", "score", "path", "(caption)"] and len(table.splitlines()) == 3
    with pytest.raises(MmtoolError, match="exactly one of --text or --image"):
        run("search", val_index, "-k", "2")


def test_hnsw_index_finds_the_same_top_hit(emoji_shards, tiny_clip_checkpoint, val_index, tmp_path):
    source = str(emoji_shards / "val-*.tar")
    approximate, _ = ImageIndex.build(source, tiny_clip_checkpoint, tmp_path / "hnsw", index_type="hnsw",
                                      progress=False)
    exact = ImageIndex.open(val_index)
    queries = exact.vectors.reconstruct_n(0, 20)  # [20, D]: the images themselves as queries
    assert [h[0].sha256 for h in approximate.search_vectors(queries, 1)] == [i["sha256"] for i in exact.items[:20]]
    with pytest.raises(MmtoolError, match="--index-type 'ivf'"):
        ImageIndex.build(source, tiny_clip_checkpoint, tmp_path / "bad", index_type="ivf")
