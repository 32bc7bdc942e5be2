"""Run under a launcher: what each rank reads and the contrastive loss over the gathered features, as JSON.

`python -m tests.helpers.multinode_probe SHARDS OUT.json BATCH`: every rank reads its loader's first batch the way
stage 1 does (rank and world from mmtool.distributed), gives each sample features seeded by its key, and computes
CLIP's loss (features gathered over all ranks). Rank 0 writes every rank's keys, the mean loss and the gathered
count.
"""
import json
import sys
import zlib
from pathlib import Path

import torch
import torch.distributed as dist

from mmtool import distributed
from mmtool.data.reading.loader import make_train_loader, resolve_shards
from stage1_clip.loss import build_loss, gather_features

DIM = 8


def key_features(key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [DIM], text [DIM]) features fixed by the sample's key, the same in any process."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.randn(DIM, generator=g, dtype=torch.float64), torch.randn(DIM, generator=g, dtype=torch.float64)


def main(shards: str, out: str, batch_size: int) -> None:
    distributed.init_distributed()
    rank, world = distributed.rank(), distributed.world_size()
    loader = make_train_loader(resolve_shards(f"{shards}/train-*.tar"), batch_size=batch_size, image_size=16,
                               epoch=0, seed=0, rank=rank, world_size=world, workers=0, batches_per_epoch=1)
    keys = next(iter(loader))["key"]
    images, texts = (torch.stack(f) for f in zip(*map(key_features, keys)))  # [B, DIM] each
    loss = build_loss("clip")(images, texts, torch.tensor(10.0, dtype=torch.float64))
    gathered = gather_features(images).shape[0]
    every_rank = [None] * world
    dist.all_gather_object(every_rank, {"rank": rank, "keys": keys})
    mean_loss = distributed.mean_over_ranks(loss)
    if distributed.is_main():
        Path(out).write_text(json.dumps({"world": world, "ranks": every_rank, "loss": mean_loss,
                                         "gathered": gathered}))
    distributed.exit_cleanly()


if __name__ == "__main__":
    # The deepspeed launcher adds --local_rank=N (mmtool's CLI drops it the same way).
    shards, out, batch_size = [arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")]
    main(shards, out, int(batch_size))
