"""Style views (stage1_clip/style_views.py): an image's embedding as the mean over fixed renderings."""
import copy
import json

import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mmtool.cli import app
from mmtool.data.reading.images import eval_transform
from mmtool.data.reading.loader import make_eval_set, resolve_shards
from mmtool.errors import MmtoolError
from stage1_clip.checkpoint import load_clip
from stage1_clip.config import EvalConfig
from stage1_clip.evaluate import embed_images, embed_views, evaluate_clip
from stage1_clip.style_views import VIEWS, check_views, view_pixels
from tests.helpers.tiny_vlm import save_tiny_clip

SIZE = 32  # the tiny ViT's input


def drawings(count: int) -> list[Image.Image]:
    """Flat-colour shapes with dark outlines on white: edges for outline and contour, dark strokes for stroke."""
    images = []
    for i in range(count):
        img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        fill = (40 * i % 256, 255 - 30 * i % 256, 90 + 20 * i % 166)
        draw.ellipse((3 + i % 5, 4, 27, 26 - i % 4), fill=fill, outline=(20, 20, 20), width=2)
        draw.rectangle((10, 12 + i % 3, 18 + i % 6, 20), fill=(250 - 25 * i % 200, 60, 30))
        images.append(img)
    return images


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return load_clip(save_tiny_clip(tmp_path_factory.mktemp("style_views") / "clip.pt")).model.eval()


def test_the_plain_view_alone_is_the_plain_embedding(tiny_model):
    crops = drawings(5)
    plain = embed_images(tiny_model, torch.stack([eval_transform(crop, SIZE) for crop in crops]), batch_size=2)
    assert torch.allclose(embed_views(tiny_model, crops, ["plain"], batch_size=2), plain, atol=1e-6)


def test_the_view_mean_matches_a_float64_reference_built_one_image_at_a_time(tiny_model):
    crops, views = drawings(6), list(VIEWS)
    reference_model = copy.deepcopy(tiny_model).double()
    expected = []
    for crop in crops:
        total = sum(reference_model.encode_image(view_pixels(crop, view).double()[None])[0] for view in views)
        expected.append(total / total.norm())
    got = embed_views(tiny_model, crops, views, batch_size=4)  # [6, D]
    assert torch.allclose(got.double(), torch.stack(expected), atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(6), atol=1e-5)
    plain = embed_views(tiny_model, crops, ["plain"], batch_size=4)
    assert (got - plain).abs().max() > 1e-3  # the renderings do change the embedding


def test_an_image_gets_the_same_embedding_in_any_batch_and_order(tiny_model):
    crops, views = drawings(5), ["plain", "contour", "stroke"]
    forward = embed_views(tiny_model, crops, views, batch_size=2)
    backward = embed_views(tiny_model, crops[::-1], views, batch_size=5)
    assert torch.allclose(forward, backward.flip(0), atol=1e-6)


def test_every_rendering_changes_the_pixels_and_is_the_same_each_time():
    crop = drawings(1)[0]
    plain = view_pixels(crop, "plain")
    for view in VIEWS:
        pixels = view_pixels(crop, view)
        assert torch.equal(pixels, view_pixels(crop, view))
        assert view == "plain" or not torch.equal(pixels, plain), view


def test_unknown_or_repeated_views_are_refused_in_one_line(tiny_clip_checkpoint, emoji_shards):
    with pytest.raises(ValueError, match="unknown style view 'blur'"):
        check_views(["plain", "blur"])
    with pytest.raises(ValueError, match="repeat"):
        EvalConfig(style_views=["plain", "plain"])
    result = CliRunner().invoke(app, ["eval-clip", "--clip", str(tiny_clip_checkpoint), "--data",
                                      f"{emoji_shards}/val-*.tar", "--style-views", "plain,blur"])
    assert result.exit_code != 0
    assert isinstance(result.exception, MmtoolError)
    assert str(result.exception).startswith("--style-views: unknown style view 'blur'")


def test_eval_clip_scores_with_the_views_asked_for_and_says_which(tiny_clip_checkpoint, emoji_shards, tmp_path):
    bundle = load_clip(tiny_clip_checkpoint)
    cfg = bundle.config
    for views in (["plain"], ["plain", "grayscale", "contour"]):
        out = tmp_path / "eval.json"
        result = CliRunner().invoke(app, ["eval-clip", "--clip", str(tiny_clip_checkpoint), "--data",
                                          f"{emoji_shards}/val-*.tar", "--style-views", ",".join(views),
                                          "--out-json", str(out)])
        assert result.exit_code == 0, (result.output, result.exception)
        written = json.loads(out.read_text())
        assert written.pop("style_views") == ",".join(views)
        effective = [] if views == ["plain"] else views
        eval_set = make_eval_set(resolve_shards(f"{emoji_shards}/val-*.tar"), cfg.model.vision.image_size,
                                 cfg.data.label_fields, as_crops=bool(effective))
        direct = evaluate_clip(bundle.model, bundle.tokenize, eval_set, cfg.eval.templates, cfg.eval.batch_size,
                               style_views=effective)
        assert written == pytest.approx(direct, abs=1e-6)
