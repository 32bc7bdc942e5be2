"""Process-group start-up shared by every stage: one plain process, torchrun or the deepspeed launcher."""
import os
import sys
import socket

import torch

from mmtool.deepspeed_import import import_deepspeed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> None:
    """Start the process group DeepSpeed needs, whatever launched us.

    A plain `python`/`mmtool` run has none of the launcher's variables; without all of
    them DeepSpeed falls back to MPI discovery and fails, so a single process gets defaults.
    """
    deepspeed = import_deepspeed()  # heavy import: only when a run actually starts

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # The shared-memory comm op compiles for ~30 s at every start; gloo does the job on CPU.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if _restarted_with_agent_store():
            _init_attempt_group(backend)
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def _restarted_with_agent_store() -> bool:
    return (int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
            and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True")


def _init_attempt_group(backend: str) -> None:
    """The process group of a run restarted by torchrun's agent, on a store prefix of its own: the agent's store
    outlives a restart, and the default prefix would hand the new processes the dead ones' addresses."""
    from datetime import timedelta

    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    world = int(os.environ["WORLD_SIZE"])
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                       is_master=False, timeout=timedelta(minutes=10))
    torch.distributed.init_process_group(backend, store=torch.distributed.PrefixStore(f"attempt{attempt}", store),
                                         rank=int(os.environ["RANK"]), world_size=world)


def intra_op_threads(requested: int | None) -> int | None:
    """train.threads as this rank's torch thread count: None or 0 keeps torch's default; -n is this rank's share of
    the usable cores less n, at least 1. Loader workers that decode images keep a core busy each, and torch threads
    spinning beside them on a shared core slow every op (stage 1 on 2 cores: 2.8 steps/s at 2 threads, 3.8 at 1)."""
    if not requested or requested > 0:
        return requested or None
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // local_ranks + requested)


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(value: torch.Tensor) -> float:
    """The average of a scalar over all ranks (for logging a global loss from local ones)."""
    if world_size() == 1:
        return value.item()
    value = value.detach().float().clone()
    torch.distributed.all_reduce(value)
    return value.item() / world_size()


def exit_cleanly() -> None:
    """End a multi-process run after a final barrier. Torch's gloo teardown occasionally aborts at interpreter
    exit ('terminate called without an active exception') after all results are written; skipping it avoids that."""
    if world_size() > 1:
        barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
