"""Views the loader never decodes (mmtool/data/reading/views.py): a view is keyed by what its pixels depend on, so a
view whose trunk output is cached reaches the step as zeros, and is drawn after all when its entry cannot be read."""
from dataclasses import replace

import torch

from mmtool.data.reading.images import normalize_pixels
from mmtool.data.reading.loader import make_train_loader
from mmtool.data.reading.views import ViewRenderer
from mmtool.feature_cache import entry_path
from stage1_clip.feature_cache import open_image_cache
from tests.stage1_clip.test_feature_cache import VISION, lit_clip
from tests.stage1_clip.test_feature_cache_views import AUGMENT, SAMPLES, drawing, shards  # noqa: F401 (fixture)

SIZE = VISION.image_size


def first_batch(urls, view_cache=None) -> dict:
    loader = make_train_loader(urls, batch_size=SAMPLES, image_size=SIZE, epoch=4, seed=3, rank=0, world_size=1,
                               workers=0, batches_per_epoch=1, shuffle_buffer=8, augment=AUGMENT, views=2,
                               view_cache=view_cache)
    return next(iter(loader))


def test_the_key_changes_with_every_input_of_the_drawing_and_needs_no_decoding():
    renderer = ViewRenderer(3, SIZE, AUGMENT)
    key = renderer.key(drawing(1), "s01", 0)
    assert renderer.key(drawing(1), "s01", 0) == key
    others = {renderer.key(drawing(2), "s01", 0), renderer.key(drawing(1), "s02", 0),
              renderer.key(drawing(1), "s01", 1), ViewRenderer(4, SIZE, AUGMENT).key(drawing(1), "s01", 0),
              ViewRenderer(3, SIZE * 2, AUGMENT).key(drawing(1), "s01", 0),
              ViewRenderer(3, SIZE, replace(AUGMENT, random_resized_crop_scale=(1.0, 1.0))).key(drawing(1), "s01", 0)}
    assert key not in others and len(others) == 6
    assert len(renderer.key(b"not an image", "s01", 0)) == 64


def test_cached_views_are_left_out_and_the_step_gets_the_live_trunk_output(shards, tmp_path):  # noqa: F811
    model, train = lit_clip()
    model.eval()  # the trained block's drop-connect and batch statistics would make the live output random
    renderer = ViewRenderer(3, SIZE, AUGMENT)
    cache = open_image_cache(model, VISION, tmp_path, train, renderer)
    drawn = first_batch(shards, cache.cache.folder)
    assert all(ref.source is None for ref in drawn["view"]) and drawn["image"].float().std() > 0
    pixels = normalize_pixels(drawn["image"])  # [B, 3, S, S]
    live = model.vision(pixels).detach()  # [B, Wv]
    half = SAMPLES // 2
    cache.features(model.vision, pixels[:half], drawn["view"][:half])  # the first half's trunk outputs stored

    left_out = first_batch(shards, cache.cache.folder)
    sources = [ref.source for ref in left_out["view"]]
    assert [s is not None for s in sources] == [True] * half + [False] * (SAMPLES - half)
    assert not left_out["image"][:half].any() and torch.equal(left_out["image"][half:], drawn["image"][half:])
    assert sources[0] == drawing(int(left_out["key"][0][1:]))
    assert [ref.key for ref in left_out["view"]] == [ref.key for ref in drawn["view"]]

    torn = entry_path(cache.cache.folder, left_out["view"][1].key)
    torn.write_bytes(torn.read_bytes()[:-4])  # an entry the loader saw that no longer reads back
    features = cache.features(model.vision, normalize_pixels(left_out["image"]), left_out["view"])  # [B, Wv]
    torch.testing.assert_close(features, live, rtol=1e-5, atol=1e-6)
    assert cache.cache.misses == half + (SAMPLES - half + 1)  # the torn entry is recomputed
    assert cache.stats()["image_cache_not_decoded"] == half / (half + SAMPLES)
