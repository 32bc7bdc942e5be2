"""Hard negatives for CLIP training: batches of similar samples, and mined negative captions.

Random batches hold mostly easy negatives. Two switches make them harder (README, "Hard negatives"):
  - data.batch_composition: `same_label` fills each batch from one data.batch_label group (e.g. the emoji
    subgroup); `knn` clusters the current model's embeddings of the training set every
    data.hard_negative_refresh steps and fills batches from the clusters (the rest of the epoch is regrouped);
  - loss.mined_negatives: K > 0 appends to each image's image->text softmax the K training captions nearest
    to it under the current model (refreshed on the same schedule), none of them a phrasing of the image.
Both hold the training set in memory (mmtool/data/reading/indexed.py). Rank 0 clusters and mines, then broadcasts, so
all ranks share one plan; the plan and the mined table travel in the training state, so --resume is exact.
"""
import numpy as np
import torch
import torch.nn.functional as F

from mmtool import distributed
from mmtool.data.reading.images import eval_transform, load_image
from mmtool.data.reading.indexed import IndexedSet, compose_batches, group_indices, make_indexed_loader
from mmtool.data.reading.sample_stream import seeded_rng
from mmtool.errors import MmtoolError
from stage1_clip.config import ClipConfig

COMPOSITIONS = ("random", "same_label", "knn")
EMBED_BATCH = 256


def check_config(cfg: ClipConfig) -> None:
    """Refuses the combinations the hard-negative paths do not support, naming the fields."""
    if cfg.data.batch_composition not in COMPOSITIONS:
        raise MmtoolError(f"data.batch_composition: {cfg.data.batch_composition!r} is not one of {COMPOSITIONS}")
    if cfg.data.hard_negative_refresh < 1:
        raise MmtoolError(f"data.hard_negative_refresh must be >= 1 step, got {cfg.data.hard_negative_refresh}")
    mined = cfg.loss.mined_negatives
    if mined < 0:
        raise MmtoolError(f"loss.mined_negatives must be >= 0, got {mined}")
    if mined and cfg.loss.type != "clip":
        raise MmtoolError(f"loss.mined_negatives: only loss.type=clip takes mined captions, not {cfg.loss.type!r}")
    if mined and cfg.loss.tile_size:
        raise MmtoolError("loss.mined_negatives with loss.tile_size: the tiled loss has no extra negative columns; "
                          "unset one of them")
    if mined and cfg.train.accum_steps > 1:
        raise MmtoolError("loss.mined_negatives with train.accum_steps > 1: gradient caching does not carry the "
                          "mined captions' features; unset one of them")


class HardNegatives:
    """Batch plans and mined captions for one run; `None` from `from_config` when both switches are off."""

    @classmethod
    def from_config(cls, cfg: ClipConfig, urls: list[str], tokenizer, batches_per_epoch: int):
        check_config(cfg)
        if cfg.data.batch_composition == "random" and not cfg.loss.mined_negatives:
            return None
        return cls(cfg, urls, tokenizer, batches_per_epoch)

    def __init__(self, cfg: ClipConfig, urls: list[str], tokenizer, batches_per_epoch: int):
        self.cfg, self.tokenizer, self.batches_per_epoch = cfg, tokenizer, batches_per_epoch
        self.composition, self.mined = cfg.data.batch_composition, cfg.loss.mined_negatives
        purpose = (f"data.batch_composition={self.composition}" if self.composition != "random"
                   else "loss.mined_negatives")
        self.indexed = IndexedSet(urls, cfg.data.max_indexed_samples, purpose)
        self.labels = self.indexed.labels(cfg.data.batch_label) if self.composition == "same_label" else None
        if self.mined >= len(self.indexed):
            raise MmtoolError(f"loss.mined_negatives {self.mined} >= the {len(self.indexed)} training samples")
        self.clusters: list[int] | None = None  # knn: cluster of each sample at the last refresh
        self.negatives: list[list[int]] | None = None  # mined: [N][K] sample indices at the last refresh
        self.plan_epoch, self.plan = None, []  # the current epoch's global micro-batches
        self.refreshed_at = None
        self.image_size = cfg.image_size_at(0)  # the input size the run trains at now (ClipStage.use_image_size)

    # --- schedule ------------------------------------------------------------------------------------------

    @property
    def uses_model(self) -> bool:
        return self.composition == "knn" or self.mined > 0

    def refresh_due(self, step: int) -> bool:
        """At every multiple of the refresh period, and at once when nothing was mined yet (e.g. resuming a
        run whose state has no hard negatives)."""
        if not self.uses_model:
            return False
        return self.refreshed_at is None or (step % self.cfg.data.hard_negative_refresh == 0
                                             and self.refreshed_at != step)

    def refresh(self, model, step: int, epoch: int, position: int) -> bool:
        """Re-embeds the training set with `model`, re-clusters / re-mines; `position` = micro-batches this rank
        has consumed in `epoch`. Returns whether the epoch's remaining batches changed (a new loader is due)."""
        image_emb, text_emb = self.embed(model)
        payload = [None]
        if distributed.is_main():
            payload[0] = {"clusters": self.cluster(image_emb, text_emb, step) if self.composition == "knn" else None,
                          "negatives": mine_negatives(image_emb, text_emb, self.indexed, self.mined)
                          if self.mined else None}
        if distributed.world_size() > 1:
            torch.distributed.broadcast_object_list(payload, src=0)
        self.clusters, self.negatives = payload[0]["clusters"], payload[0]["negatives"]
        self.refreshed_at = step
        if self.composition != "knn" or self.plan_epoch != epoch:
            return False
        done = position * distributed.world_size()
        used = {i for batch in self.plan[:done] for i in batch}
        remaining = [i for i in range(len(self.indexed)) if i not in used]
        groups = group_indices([self.clusters[i] for i in remaining])
        regrouped = compose_batches([[remaining[i] for i in g] for g in groups], self.cfg.data.batch_size,
                                    len(self.plan) - done, seeded_rng(self.cfg.train.seed, epoch, "regroup", step))
        self.plan = self.plan[:done] + regrouped
        return True

    # --- batches -------------------------------------------------------------------------------------------

    def loader(self, epoch: int, skip_batches: int, augment):
        """This rank's batches of `epoch` from the plan, or None when batches stay random (streamed)."""
        if self.composition == "random":
            return None
        if self.plan_epoch != epoch:
            keys = self.labels if self.composition == "same_label" else self.clusters
            self.plan = compose_batches(group_indices(keys), self.cfg.data.batch_size,
                                        self.batches_per_epoch * distributed.world_size(),
                                        seeded_rng(self.cfg.train.seed, epoch, "compose"))
            self.plan_epoch = epoch
        return make_indexed_loader(
            self.indexed, self.plan, batch_size=self.cfg.data.batch_size,
            image_size=self.image_size, epoch=epoch, seed=self.cfg.train.seed,
            rank=distributed.rank(), world_size=distributed.world_size(), workers=self.cfg.data.workers,
            skip_batches=skip_batches, augment=augment)

    def negative_tokens(self, keys: list[str], step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Token ids and mask [B, K, T] of the mined captions of each sample of a batch (None when off)."""
        if not self.mined:
            return None
        captions = []
        for key in keys:
            index = self.indexed.index_of[key]
            own = set(self.indexed.samples[index].captions)
            rng = seeded_rng(self.cfg.train.seed, step, key)
            for j in self.negatives[index]:
                choices = [c for c in self.indexed.samples[j].captions if c not in own]
                captions.append(choices[int(rng.integers(len(choices)))])
        ids, mask = self.tokenizer(captions, self.cfg.model.text.context_length)  # [B*K, T]
        return ids.view(len(keys), self.mined, -1), mask.view(len(keys), self.mined, -1)

    # --- embedding, clustering, mining ---------------------------------------------------------------------

    @torch.no_grad()
    def embed(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image and canonical-caption embeddings of every sample [N, D] (each rank embeds a slice,
        then all ranks gather)."""
        was_training = model.training
        model.eval()
        param = next(model.parameters())
        size, length = self.image_size, self.cfg.model.text.context_length
        mine = list(range(distributed.rank(), len(self.indexed), distributed.world_size()))
        images, texts = [], []
        for start in range(0, len(mine), EMBED_BATCH):
            samples = [self.indexed.samples[i] for i in mine[start:start + EMBED_BATCH]]
            pixels = torch.stack([eval_transform(load_image(s.image), size) for s in samples])  # [b, 3, H, W]
            images.append(model.encode_image(pixels.to(param.device, param.dtype)).float())
            ids, mask = self.tokenizer([s.captions[0] for s in samples], length)
            texts.append(model.encode_text(ids.to(param.device), mask.to(param.device)).float())
        model.train(was_training)
        return gather_slices(torch.cat(images), len(self.indexed)), gather_slices(torch.cat(texts), len(self.indexed))

    def cluster(self, image_emb: torch.Tensor, text_emb: torch.Tensor, step: int) -> list[int]:
        """k-means (faiss, spherical) of the joint embeddings into about one batch's worth of samples each."""
        import faiss

        joint = F.normalize(image_emb + text_emb, dim=-1).numpy().astype(np.float32)  # [N, D]
        k = max(1, len(joint) // self.cfg.data.batch_size)
        kmeans = faiss.Kmeans(joint.shape[1], k, niter=20, seed=self.cfg.train.seed + step, spherical=True,
                              verbose=False)
        kmeans.train(joint)
        return kmeans.index.search(joint, 1)[1][:, 0].tolist()

    # --- resume --------------------------------------------------------------------------------------------

    def state(self) -> dict:
        return {"clusters": self.clusters, "negatives": self.negatives, "plan_epoch": self.plan_epoch,
                "plan": self.plan, "refreshed_at": self.refreshed_at}

    def load_state(self, state: dict | None) -> None:
        if state:
            self.clusters, self.negatives = state["clusters"], state["negatives"]
            self.plan_epoch, self.plan, self.refreshed_at = state["plan_epoch"], state["plan"], state["refreshed_at"]


def gather_slices(local: torch.Tensor, total: int) -> torch.Tensor:
    """Rows r, r + W, r + 2W, ... from each rank r -> all `total` rows in order [total, D], on every rank."""
    world = distributed.world_size()
    if world == 1:
        return local
    rows = -(-total // world)
    padded = torch.zeros(rows, local.shape[1], dtype=local.dtype, device=local.device)  # [rows, D]
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.stack(parts, dim=1).reshape(rows * world, -1)[:total]  # row i*W + r = rank r's i-th


def mine_negatives(image_emb: torch.Tensor, text_emb: torch.Tensor, indexed: IndexedSet, k: int) -> list[list[int]]:
    """For each sample, the k samples whose canonical caption is nearest its image, excluding every sample that
    shares a phrasing with it (itself and identical captions: the positive never comes back as a negative)."""
    picked = []
    for start in range(0, len(image_emb), 1024):
        scores = image_emb[start:start + 1024] @ text_emb.T  # [c, N]
        for row in range(len(scores)):
            scores[row, sorted(indexed.conflicts(start + row))] = float("-inf")
        top = scores.topk(k, dim=1)
        if not top.values.isfinite().all():
            raise MmtoolError(f"loss.mined_negatives {k}: some samples have fewer non-matching captions")
        picked.extend(top.indices.tolist())
    return picked
