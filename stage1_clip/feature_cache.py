"""Stage 1 never recomputes a frozen tower: the locked text tower's pooled output per caption, and the frozen
prefix of the image tower's output per image view, both read back from a cache (mmtool/feature_cache.py).

Freezing is data: a tower (or a prefix of EfficientNet-Lite0's stages: stem, blocks 0..15, head) counts as frozen
when `train.param_groups` give all its parameters lr 0. Frozen modules run in eval mode in both paths (BatchNorm
keeps its statistics, no dropout or drop-connect: CLIP.train and EfficientNetLite0Tower.train), so a cached output
is what the live tower would compute. Other image towers are cached only when wholly frozen (their pooled output).

Text: keyed by the exact token ids and attention mask ([2, T] per caption, so the context length is in the key
too), namespaced by the tower's weights hash, its config (type, pooling, context length) and the precision.

Image trunk and augmentation: a cache can only pay off when an image's input repeats, and today's augmentation
draws a new random crop (and style) every epoch. With the trunk cache on, each image instead has a fixed set of
`data.cached_views` views, view v drawn with the full live augmentation (random resized crop, grayscale, outline,
...) from a generator seeded by (seed, v, sample key), and each epoch picks one view per sample, seeded by (seed,
epoch, key) (mmtool/data/reading/views.py). Every epoch's image is thus distributed exactly as on the live path;
what it costs is diversity over the run: an image shows at most `cached_views` crops and renderings instead of one
per epoch (the default recipe's 15 epochs). The key names the view by what its pixels depend on (image bytes,
sample key, view, seed, size, augmentation settings and code), so the loader skips decoding a view already cached;
the namespace holds the frozen stages' weights hash, the cut point, the image size and the precision. The views
are computed on first use (the first epochs build the cache), not ahead of training.

Where: `<train shards' folder>/feature_cache/<namespace digest>/`, as stages 2-3 do: a sweep of recipes over the
same data and towers (issue 19's folds, resolutions, heads) shares the entries, which a per-run cache would recompute.
"""
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from mmtool.config import to_dict
from mmtool.data.reading.images import AugmentConfig, normalize_pixels
from mmtool.data.reading.views import ViewRef, ViewRenderer
from mmtool.engine import load_deepspeed_config
from mmtool.feature_cache import (FOLDER, FeatureCache, all_frozen, frozen_by_rules, precision_of, state_sha256,
                                  weights_sha256)
from mmtool.errors import MmtoolError
from mmtool.train_config import TrainSettings
from stage1_clip.config import ClipConfig


class TextCache:
    """The locked text tower's pooled output [B, Wt] by token ids and mask."""

    def __init__(self, cache: FeatureCache):
        self.cache = cache

    def features(self, tower: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 uses_mask: bool) -> torch.Tensor:
        tokens = torch.stack([input_ids, attention_mask], dim=1)  # [B, 2, T]
        return self.cache.features(
            tokens, lambda t: tower(t[:, 0], t[:, 1]) if uses_mask else tower(t[:, 0]))  # [B, Wt]

    def stats(self) -> dict:
        return self.cache.stats()


class ImageTrunkCache:
    """The image tower's frozen first `cut` stages by view (or by pixels); the stages after the cut run live.
    `renderer` draws the views the loader left out whose entries cannot be read back after all; `trunk`, an
    inference copy of the tower whose first `cut` stages are folded for speed
    (EfficientNetLite0Tower.folded_copy), computes the misses in the tower's place."""

    def __init__(self, cache: FeatureCache, cut: int | None, renderer: ViewRenderer | None = None,
                 trunk: nn.Module | None = None):
        self.cache, self.cut, self.renderer = cache, cut, renderer  # cut None: the whole tower's pooled output
        self.trunk = trunk
        self.not_decoded = 0  # views the loader left out because their entry was there

    def features(self, tower: nn.Module, images: torch.Tensor, views: list[ViewRef] | None = None) -> torch.Tensor:
        """[B, 3, H, W] -> [B, Wv], the tower's output; `views` names the rows (else their pixels are hashed)."""
        keys, fill = None, None
        if views is not None:
            keys, fill = [ref.key for ref in views], lambda inputs, rows: self.draw_left_out(inputs, views, rows)
            self.not_decoded += sum(ref.source is not None for ref in views)
        if self.cut is None:
            return self.cache.features(images, tower, keys, fill)  # [B, Wv]
        trunk = self.cache.features(images, lambda x: self.prefix(tower, x), keys, fill)  # [B, C, h, w]
        return tower.finish(trunk, self.cut)  # [B, Wv]

    def prefix(self, tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The first `cut` stages on `images` [M, 3, H, W]: by the folded copy, moved to the tower's device and
        dtype (the engine casts and places the tower after the cache opens), else by the tower itself."""
        if self.trunk is None:
            return tower.prefix(images, self.cut)
        reference = next(tower.parameters())
        self.trunk.to(device=reference.device, dtype=reference.dtype)  # in place; a no-op once they match
        with torch.no_grad():
            return self.trunk.prefix(images, self.cut)  # [M, C, h, w]

    def draw_left_out(self, images: torch.Tensor, views: list[ViewRef], rows: list[int]) -> torch.Tensor:
        """`images` [B, 3, S, S] (normalised) with the views among `rows` that the loader left out drawn in."""
        redraw = [i for i in rows if views[i].source is not None]
        if not redraw:
            return images
        images = images.clone()
        for i in redraw:
            pixels = self.renderer.pixels(views[i].source, views[i].sample_key, views[i].view)  # [3, S, S] uint8
            images[i] = normalize_pixels(pixels.to(images.device), images.dtype)
        return images

    def stats(self) -> dict:
        looked_up = self.cache.hits + self.cache.misses
        return {**self.cache.stats(), "image_cache_not_decoded": self.not_decoded / looked_up if looked_up else 0.0}


def frozen_stages(tower: nn.Module, lr: float, rules: list) -> int:
    """How many leading stages of a staged tower (EfficientNet-Lite0) the param groups freeze."""
    count = 0
    for prefixes in tower.stage_parameter_prefixes():
        if not all_frozen(((n, p) for n, p in tower.named_parameters() if n.startswith(prefixes)), "vision.", lr,
                          rules):
            break
        count += 1
    return count


def prefix_state(tower: nn.Module, cut: int) -> dict:
    """The tower's state entries the first `cut` stages compute with (the input affine included)."""
    later = sum(tower.stage_parameter_prefixes()[cut:], ())
    return {name: tensor for name, tensor in tower.state_dict().items() if not name.startswith(later)}


def open_text_cache(model: nn.Module, text_config, data_folder: Path, train: TrainSettings) -> TextCache | None:
    """The cache of the text tower when the param groups lock it, else None."""
    if not frozen_by_rules(model.text, "text.", train.lr, train.param_groups):
        return None
    namespace = {"tower": "text", "tower_sha256": weights_sha256(model.text), "config": to_dict(text_config),
                 "precision": precision_of(load_deepspeed_config(train.deepspeed))}
    return TextCache(FeatureCache(Path(data_folder) / FOLDER, namespace, label="text_cache"))


def open_image_cache(model: nn.Module, vision_config, data_folder: Path, train: TrainSettings,
                     renderer: ViewRenderer | None = None) -> ImageTrunkCache | None:
    """The cache of the image tower's frozen prefix (or whole frozen tower), else None; `renderer`: the run's views."""
    tower = model.vision
    if frozen_by_rules(tower, "vision.", train.lr, train.param_groups):
        cut, weights = None, weights_sha256(tower)
    elif hasattr(tower, "stage_parameter_prefixes"):
        cut = frozen_stages(tower, train.lr, train.param_groups)
        if cut == 0:
            return None
        weights = state_sha256(prefix_state(tower, cut))
    else:
        return None
    namespace = {"tower": "image", "key": "view", "tower_sha256": weights, "cut": cut, "config": to_dict(vision_config),
                 "precision": precision_of(load_deepspeed_config(train.deepspeed))}
    trunk = tower.folded_copy(cut) if cut is not None and hasattr(tower, "folded_copy") else None
    return ImageTrunkCache(FeatureCache(Path(data_folder) / FOLDER, namespace, label="image_cache"), cut, renderer,
                           trunk)


def open_caches(model: nn.Module, cfg: ClipConfig, data_folder: Path, planned_batches: bool,
                augment: AugmentConfig) -> dict[int, ImageTrunkCache]:
    """The frozen towers' caches `cfg` allows: the text cache, attached to `model` as text_cache, and, returned, the
    image cache of each input size the run trains at (data.low_res), which the stage attaches as model.image_cache.
    Batches planned by hard-negative mining have no fixed image views, so they get no image cache."""
    if not cfg.data.feature_cache:
        return {}
    if cfg.data.cached_views < 1:
        raise MmtoolError(f"data.cached_views: {cfg.data.cached_views}, needs at least 1 view per image")
    model.text_cache = open_text_cache(model, cfg.model.text, data_folder, cfg.train)
    if planned_batches:
        return {}
    image_caches = {}
    for size in {cfg.image_size_at(0), cfg.model.vision.image_size}:
        renderer = ViewRenderer(cfg.train.seed, size, augment)
        vision = replace(cfg.model.vision, image_size=size)
        if cache := open_image_cache(model, vision, data_folder, cfg.train, renderer):
            image_caches[size] = cache
    return image_caches
