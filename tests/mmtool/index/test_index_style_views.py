"""An index reads images in its CLIP's style views (eval.style_views), as eval-clip does: the vectors equal
stage1_clip.evaluate's embed_views, an indexed image finds itself, exports carry the views, and an index built
before the views existed keeps reading the plain crop."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmtool.cli import app
from mmtool.data.reading.images import eval_crop, load_image
from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.export.folder import read_manifest
from mmtool.index import ImageIndex
from stage1_clip.checkpoint import load_clip
from stage1_clip.evaluate import embed_views
from tests.helpers.tiny_clip import write_tiny_clip

VIEWS = ["plain", "outline", "contour"]


@pytest.fixture(scope="module")
def viewed(emoji_shards, tmp_path_factory):
    """A tiny CLIP with style views, and a folder of 6 val emoji PNGs."""
    root = tmp_path_factory.mktemp("index_views")
    checkpoint = write_tiny_clip(emoji_shards, root / "clip.pt", style_views=tuple(VIEWS))
    (root / "images").mkdir()
    for i, raw in zip(range(6), parsed_samples(resolve_shards(str(emoji_shards / "val-*.tar")), Counter())):
        (root / "images" / f"{i:02d}.png").write_bytes(raw.image)
    return checkpoint, root / "images"


def expected_vectors(checkpoint, folder, views) -> torch.Tensor:
    bundle = load_clip(checkpoint)
    size = bundle.config.model.vision.image_size
    crops = [eval_crop(load_image(path.read_bytes()), size) for path in sorted(folder.iterdir())]
    return embed_views(bundle.model.eval(), crops, views, batch_size=4)  # [N, D]


def test_vectors_are_the_view_mean_and_an_image_finds_itself(viewed, tmp_path):
    checkpoint, folder = viewed
    index, _ = ImageIndex.build(str(folder), checkpoint, tmp_path / "index", batch_size=4, progress=False)
    assert json.loads((tmp_path / "index" / "index.json").read_text())["style_views"] == VIEWS
    order = np.argsort([item["path"] for item in index.items])
    vectors = torch.from_numpy(index.vectors.reconstruct_n(0, 6)[order])  # [6, D]
    assert torch.allclose(vectors, expected_vectors(checkpoint, folder, VIEWS), atol=1e-5)
    assert not torch.allclose(vectors, expected_vectors(checkpoint, folder, ["plain"]), atol=1e-3)
    query = sorted(folder.iterdir())[2]
    best = index.search(image=query, k=1)[0]
    assert best.path.endswith(query.name) and best.score == pytest.approx(1.0, abs=1e-5)


def test_an_export_carries_the_views_into_its_index(viewed, tmp_path):
    checkpoint, folder = viewed
    result = CliRunner().invoke(app, ["export-clip", str(checkpoint), "--format", "onnx", "--out",
                                      str(tmp_path / "onnx")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert read_manifest(tmp_path / "onnx")["style_views"] == VIEWS
    from_export, _ = ImageIndex.build(str(folder), tmp_path / "onnx", tmp_path / "index", progress=False)
    from_checkpoint, _ = ImageIndex.build(str(folder), checkpoint, tmp_path / "index_torch", progress=False)
    assert np.allclose(from_export.vectors.reconstruct_n(0, 6), from_checkpoint.vectors.reconstruct_n(0, 6),
                       atol=1e-4)


def test_an_index_from_before_the_views_reads_the_plain_crop(viewed, tmp_path):
    checkpoint, folder = viewed
    ImageIndex.build(str(folder), checkpoint, tmp_path / "index", progress=False)
    meta_path = tmp_path / "index" / "index.json"
    meta = json.loads(meta_path.read_text())
    del meta["style_views"]
    meta_path.write_text(json.dumps(meta))
    older = ImageIndex.open(tmp_path / "index")
    assert older.style_views == []
    query = sorted(folder.iterdir())[0]
    plain = expected_vectors(checkpoint, folder, ["plain"])[0]  # [D]
    best = older.search(image=query, k=6)
    stored = {hit.path: hit.score for hit in best}
    own = torch.from_numpy(older.vectors.reconstruct_n(0, 6))  # [6, D]: embedded in the views
    paths = [item["path"] for item in older.items]
    assert all(stored[path] == pytest.approx(float(own[row] @ plain), abs=1e-5) for row, path in enumerate(paths))
