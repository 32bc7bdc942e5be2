"""Hard negatives: in-memory batch composition (same label, clusters), mined captions, no positive leaks, resume."""

import numpy as np
import pytest
import torch

from mmtool.config import load_config
from mmtool.data.building.shard_writer import SplitWriter, write_meta
from mmtool.data.reading.images import AugmentConfig, eval_transform, load_image
from mmtool.data.reading.indexed import IndexedSet, compose_batches, group_indices, make_indexed_loader
from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.sample_format import encode_sample
from mmtool.errors import MmtoolError
from stage1_clip.config import ClipConfig
from stage1_clip.hard_negatives import HardNegatives, check_config, mine_negatives
from stage1_clip.model import CLIP
from tests.helpers.distributed import run_on_ranks
from tests.mmtool.data.reading.test_loader import png
from tests.stage1_clip.test_train_e2e import assert_resume_from_step3_matches, pretrain

pytestmark = pytest.mark.slow

SAMPLES = 40


def sample(i: int) -> dict:
    captions = [f"caption {i}", f"phrasing {i}"]
    if i % 5 == 0:
        captions.append(f"shared phrase {i % 10}")  # samples 0, 10, 20, 30 share one; 5, 15, 25, 35 another
    image = png((7 * i, 255 - 5 * i, 3 * i))
    if i == 39:
        image = png((7 * 38, 255 - 5 * 38, 3 * 38))  # an exact duplicate of sample 38's image
    return encode_sample(f"s{i:03d}", image, captions, {"subgroup": f"sub{i % 4}"})


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("hard_shards")
    writer = SplitWriter(out, shard_size=15)
    for i in range(SAMPLES):
        writer.write("train", sample(i))
    write_meta(out, "synthetic", writer.close())
    return resolve_shards(str(out / "train-*.tar"))


@pytest.fixture(scope="module")
def indexed(shards) -> IndexedSet:
    return IndexedSet(shards, max_samples=1000, purpose="test")


def test_duplicate_images_merge_and_the_memory_limit_is_a_clear_error(shards, indexed):
    assert len(indexed) == SAMPLES - 1
    assert indexed.index_of["s039"] == indexed.index_of["s038"]
    assert {"caption 39", "caption 38"} <= set(indexed.samples[indexed.index_of["s038"]].captions)
    assert indexed.conflicts(indexed.index_of["s000"]) == {indexed.index_of[f"s{i:03d}"] for i in (0, 10, 20, 30)}
    with pytest.raises(MmtoolError, match="data.max_indexed_samples=10"):
        IndexedSet(shards, max_samples=10, purpose="data.batch_composition=knn")
    with pytest.raises(MmtoolError, match="data.batch_label 'colour'"):
        indexed.labels("colour")


def test_batches_fill_from_one_group_and_mix_small_groups():
    rng = np.random.default_rng(0)
    groups = [list(range(0, 8)), list(range(8, 20)), list(range(20, 24))]  # multiples of the batch: all pure
    batches = compose_batches(groups, 4, 6, rng)
    assert sorted(i for b in batches for i in b) == list(range(24))
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    assert all(len({group_of[i] for i in b}) == 1 for b in batches)
    small = compose_batches([[0, 1, 2], [3, 4], [5, 6, 7, 8, 9, 10, 11]], 4, 3, np.random.default_rng(1))
    assert len({i for b in small for i in b}) == 12 and any(len(group_indices([i < 3 for i in b])) > 1
                                                            for b in small)
    with pytest.raises(MmtoolError):
        compose_batches(groups, 4, 7, rng)


def loader_batches(indexed, plan, **settings):
    args = dict(batch_size=4, image_size=8, epoch=0, seed=0, rank=0, world_size=1, workers=0, skip_batches=0,
                augment=AugmentConfig())
    return list(make_indexed_loader(indexed, plan, **{**args, **settings}))


def test_label_batches_split_over_ranks_resume_exactly_and_keep_captions_apart(indexed):
    labels = indexed.labels("subgroup")
    plan = compose_batches(group_indices(labels), 4, 8, np.random.default_rng(3))
    ranks = [loader_batches(indexed, plan, rank=r, world_size=2, workers=2) for r in (0, 1)]
    assert [len(b) for b in ranks] == [4, 4]
    seen = [k for batches in ranks for b in batches for k in b["key"]]
    assert len(seen) == len(set(seen)) == 32
    # most batches are one subgroup (the groups hold 9-10 samples, the batch 4)
    pure = sum(len({labels[indexed.index_of[k]] for k in b["key"]}) == 1 for batches in ranks for b in batches)
    assert pure >= 4
    resumed = loader_batches(indexed, plan, rank=1, world_size=2, skip_batches=2)
    for fresh, again in zip(ranks[1][2:], resumed):
        assert fresh["key"] == again["key"] and fresh["caption"] == again["caption"]
        assert torch.equal(fresh["image"], again["image"])
    # no caption of a batch is a phrasing of another member of it (the "shared phrase" samples meet in sub0/sub1)
    together = [[0, 10, 20, 30], [5, 15, 25, 35]]
    plan = [[indexed.index_of[f"s{i:03d}"] for i in members] for members in together]
    for seed in range(5):
        for batch in loader_batches(indexed, plan, seed=seed):
            for key, caption in zip(batch["key"], batch["caption"]):
                others = [indexed.samples[indexed.index_of[k]] for k in batch["key"] if k != key]
                assert all(caption not in other.captions for other in others), (key, caption)


def test_mined_negatives_are_the_nearest_non_matching_captions(indexed):
    gen = torch.Generator().manual_seed(0)
    n = len(indexed)
    image_emb = torch.nn.functional.normalize(torch.randn(n, 6, generator=gen), dim=-1)
    text_emb = torch.nn.functional.normalize(torch.randn(n, 6, generator=gen), dim=-1)
    text_emb[:n // 2] = image_emb[:n // 2]  # each of these images' own caption is its nearest: must not come back
    mined = mine_negatives(image_emb, text_emb, indexed, 3)
    for i in range(n):
        conflicts = {j for j in range(n) if set(indexed.samples[i].captions) & set(indexed.samples[j].captions)}
        ranked = sorted((j for j in range(n) if j not in conflicts), key=lambda j: -float(image_emb[i] @ text_emb[j]))
        assert mined[i] == ranked[:3], i
        assert i not in mined[i] and not conflicts & set(mined[i])


@pytest.mark.parametrize("sets, message", [
    (["loss.mined_negatives=2", "loss.tile_size=64"], "loss.tile_size"),
    (["loss.mined_negatives=2", "train.accum_steps=2"], "train.accum_steps"),
    (["loss.mined_negatives=2", "loss.type=siglip"], "loss.type=clip"),
    (["data.batch_composition=nearest"], "data.batch_composition"),
    (["data.hard_negative_refresh=0"], "data.hard_negative_refresh"),
])
def test_unsupported_combinations_are_config_errors(sets, message):
    with pytest.raises(MmtoolError, match=message):
        check_config(load_config(ClipConfig, "configs/clip/tiny_vit.yaml", sets))


def test_knn_batches_with_mined_captions_train_and_resume_exactly(emoji_shards, tmp_path):
    """Refresh every 2 steps (mid-epoch regrouping; none at the last step), stop after step 3, resume: steps 4-6
    match exactly."""
    common = ["data.batch_size=32", "train.max_steps=6", "train.save_every=3", "train.keep_states=5",
              "data.val=null", "data.batch_composition=knn", "data.hard_negative_refresh=2",
              "loss.mined_negatives=2"]
    full = tmp_path / "full"
    result = pretrain(emoji_shards, full, *common)
    assert result.stderr.count("hard negatives refreshed") + result.stdout.count("hard negatives refreshed") == 3
    assert_resume_from_step3_matches(emoji_shards, full, tmp_path / "resumed", common)


def word_tokenizer(texts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stand-in for the sentencepiece tokenizer: a word's id is a stable hash; 3 ends the text."""
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    for row, text in enumerate(texts):
        words = [4 + sum(map(ord, w)) % 60 for w in text.split()][:length - 1] + [3]
        ids[row, :len(words)] = torch.tensor(words)
    return ids, (ids > 0).long()


TINY_MODEL = ["model.embed_dim=8", "model.vision.image_size=16", "model.vision.width=16", "model.vision.layers=1",
              "model.vision.heads=2", "model.text.width=16", "model.text.layers=1", "model.text.heads=2",
              "model.text.context_length=8"]


def _refresh_on_rank(rank: int, world: int, shards: list[str], out_dir: str) -> None:
    sets = [*TINY_MODEL, "data.batch_size=4", "data.workers=0", "data.batch_composition=knn", "loss.mined_negatives=2"]
    cfg = load_config(ClipConfig, "configs/clip/tiny_vit.yaml", sets)
    torch.manual_seed(0)
    model = CLIP(cfg.model, cfg.loss, vocab_size=64)
    mining = HardNegatives.from_config(cfg, shards, word_tokenizer, batches_per_epoch=4)
    mining.refresh(model, step=0, epoch=0, position=0)
    keys = [b["key"] for b in mining.loader(0, 0, AugmentConfig())]
    torch.save({"state": mining.state(), "keys": keys, "embeddings": mining.embed(model)},
               f"{out_dir}/rank{rank}.pt")


@pytest.mark.distributed
def test_two_ranks_share_one_plan_and_get_different_batches(shards, tmp_path):
    run_on_ranks(_refresh_on_rank, 2, shards, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["state"] == ranks[1]["state"]
    assert len(ranks[0]["keys"]) == len(ranks[1]["keys"]) == 4
    seen = [k for r in ranks for batch in r["keys"] for k in batch]
    assert len(seen) == len(set(seen)) == 32
    # the slices each rank embedded come back in sample order: equal to one process embedding everything
    cfg = load_config(ClipConfig, "configs/clip/tiny_vit.yaml", TINY_MODEL)
    torch.manual_seed(0)
    model = CLIP(cfg.model, cfg.loss, vocab_size=64).eval()
    indexed = IndexedSet(shards, 1000, "test")
    with torch.no_grad():
        images = model.encode_image(torch.stack([eval_transform(load_image(s.image), 16) for s in indexed.samples]))
    torch.testing.assert_close(ranks[0]["embeddings"][0], images, rtol=1e-5, atol=1e-6)
