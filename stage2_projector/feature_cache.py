"""The frozen image tower's patch features, computed once per image and read back on every later use.

Key: sha256 of the preprocessed image tensor, the exact input of the tower, so the decoder, resize, crop and
normalisation are part of the key and a random augmentation can never be served a stale view. Namespace: the
tower's weights (sha256 of its state dict as trained, not of a file that may hold other weights), type, feature
layer, token grid, image size and the engine's precision setting (bf16 autocast gives other features than
float32). A changed tower, layer, grid, resolution or precision reads and writes another folder, so it never sees
the old entries.

Where: beside the training data (`<data folder>/feature_cache/<namespace>/`), so every run on the same tower and
images shares it (a sweep of stage-2/3 recipes on one CLIP computes each image's features once), not only the
epochs of one run. The cache itself (files, keys, atomic writes, ranks agreeing) is mmtool/feature_cache.py.
"""
from pathlib import Path

from mmtool.engine import load_deepspeed_config
from mmtool.feature_cache import (FOLDER, FeatureCache, frozen_by_rules, image_key,  # noqa: F401 (image_key: API)
                                  precision_of, weights_sha256)
from mmtool.train_config import TrainSettings


def open_feature_cache(model, record: dict, setting: str | None, data_folder: Path,
                       train: TrainSettings) -> "FeatureCache | None":
    """The cache for `model`'s tower, or None when `setting` is null or the tower learns (its features change
    every step). `setting`: "auto" (data_folder/feature_cache) or a folder."""
    if not setting or not frozen_by_rules(model.vision, "vision.", train.lr, train.param_groups):
        return None
    vision = record["vision"]
    namespace = {"tower_sha256": weights_sha256(model.vision), "type": vision["type"],
                 "feature_layer": vision["feature_layer"], "image_size": vision["image_size"],
                 "precision": precision_of(load_deepspeed_config(train.deepspeed)),
                 # only when set: the entries of runs made before token_grid existed keep their folder
                 **({"token_grid": vision["token_grid"]} if vision.get("token_grid") else {})}
    return FeatureCache(Path(data_folder) / FOLDER if setting == "auto" else Path(setting), namespace)
