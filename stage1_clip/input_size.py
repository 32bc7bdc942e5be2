"""Stage 1's input size over a run: low resolution first (data.low_res, as CLIPA), then the model's own size.

Which size each step trains at, the trunk cache and val evaluation at that size, and the lr schedule's restart at
the switch. A tower that takes any input size only (EfficientNet-Lite0).
"""
from mmtool.data.reading.loader import make_eval_set, resolve_shards
from mmtool.errors import MmtoolError
from mmtool.optim import WarmRestart
from stage1_clip.config import ClipConfig
from stage1_clip.evaluate import evaluate_clip


def low_res_restart(cfg: ClipConfig, steps_per_epoch: int) -> WarmRestart | None:
    """The lr schedule's second warm-up and cosine for the steps at the final size, once data.low_res is checked:
    it needs a tower that takes any input size and must leave steps at the final size."""
    low_res = cfg.data.low_res
    if not low_res.steps:
        return None
    if cfg.model.vision.type != "efficientnet_lite0":
        raise MmtoolError(f"data.low_res: model.vision.type {cfg.model.vision.type} has a fixed input size; "
                          "only efficientnet_lite0 trains at two sizes")
    total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    if low_res.steps >= total:
        raise MmtoolError(f"data.low_res.steps {low_res.steps}: the run has {total} steps, none would be at "
                          f"model.vision.image_size {cfg.model.vision.image_size}")
    return WarmRestart(low_res.steps, low_res.warmup_steps, low_res.lr_ratio)


class InputSize:
    """The size the run trains at now; switching it swaps the model's image cache (one per size) and the size hard
    negatives are mined at."""

    def __init__(self, cfg: ClipConfig, model, mining, image_caches: dict):
        self.cfg, self.model, self.image_caches, self.mining = cfg, model, image_caches, mining
        self.pixels = None
        self.eval_sets = {}  # by size, built on first use
        self.follow(0, say=None)  # the first size: nothing to tell

    def follow(self, step: int, say) -> bool:
        """Trains at the size of optimizer step `step` from now on (`say` tells of a change); True on a change."""
        size = self.cfg.image_size_at(step)
        if size == self.pixels:
            return False
        if self.pixels is not None:
            say(f"images at {size} px from step {step}")
        self.pixels = size
        self.model.image_cache = self.image_caches.get(size)
        if self.mining:
            self.mining.image_size = size
        return True

    def stats(self) -> dict:
        """For the train log: the size and the caches' figures."""
        caches = [cache for cache in (self.model.text_cache, self.model.image_cache) if cache is not None]
        return {"image_size": self.pixels, **{k: v for cache in caches for k, v in cache.stats().items()}}

    def evaluate(self, model, tokenize) -> dict:
        """Val metrics at the current size (so early evaluations measure what the run trains); {} without a val set."""
        if not self.cfg.data.val:
            return {}
        if self.pixels not in self.eval_sets:
            self.eval_sets[self.pixels] = make_eval_set(resolve_shards(self.cfg.data.val), self.pixels,
                                                        self.cfg.data.label_fields)
        metrics = evaluate_clip(model, tokenize, self.eval_sets[self.pixels], self.cfg.eval.templates,
                                self.cfg.eval.batch_size)
        return {**metrics, "image_size": self.pixels}
