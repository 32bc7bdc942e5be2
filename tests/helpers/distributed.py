"""Run a function on N CPU processes joined by a gloo process group (for tests of cross-rank code)."""
import os
import socket
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args: tuple) -> None:
    # torch 2.13 warns on every differentiable all_gather; children do not inherit pytest's filters.
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)  # 2 CPUs shared by all ranks
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    fn(rank, world, *args)
    dist.barrier()
    dist.destroy_process_group()
    # gloo sometimes aborts during interpreter teardown ("terminate called ..."); results are already on disk.
    os._exit(0)


def run_on_ranks(fn, world: int, *args) -> None:
    """Call fn(rank, world, *args) in `world` spawned processes; fn must be importable and write its results to disk.

    A child's exception is re-raised here (torch.multiprocessing.ProcessRaisedException) and the others are stopped.
    """
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)
