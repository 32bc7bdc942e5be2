"""Starting one command as two "nodes" on this machine: two launcher processes (torchrun with a c10d rendezvous,
or the deepspeed launcher with a two-host hostfile and --no_ssh), one rank each, joined over 127.0.0.1 with gloo.

Also cuts a shard holding exactly a given number of samples, so that one optimizer step sees a whole epoch: a
global batch is then the same set of samples however it is split over ranks, and two ranks must train exactly
like one process holding the whole batch.
"""
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.helpers.distributed import free_port
from tests.stage1_clip.test_train_e2e import clean_env

TIMEOUT_S = 300


def cut_shard(source: Path, out: Path, samples: int) -> Path:
    """out/train-000000.tar with the first `samples` samples (all members of each key) of `source`."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(source) as src, tarfile.open(out / "train-000000.tar", "w") as dst:
        keys = []
        for member in src.getmembers():
            key = member.name.split(".")[0]
            if key not in keys:
                if len(keys) == samples:
                    break
                keys.append(key)
            dst.addfile(member, src.extractfile(member))
    assert len(keys) == samples, f"{source} holds fewer than {samples} samples"
    return out


def torchrun_nodes(module_args: list[str], nodes: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    """One torchrun command line per "node", sharing a c10d rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    return [[sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "mmtool-test", "--node-rank",
             str(node), *extra, "-m", *module_args] for node in range(nodes)]


def deepspeed_nodes(module_args: list[str], hostfile: Path, nodes: int = 2) -> list[str]:
    """One deepspeed-launcher command line per "node": a hostfile naming two hosts (localhost, 127.0.0.1), each
    launcher starting its own node's rank without ssh (--no_ssh --node_rank), the first host as master."""
    hostfile.write_text("".join(f"{host} slots=1\n" for host in ("localhost", "127.0.0.1", "127.0.0.2")[:nodes]))
    port = str(free_port())
    return [[sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
             "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", port, "--module",
             *module_args] for node in range(nodes)]


def run_together(commands: list[list[str]], env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Starts every command at once (as on separate nodes) and waits for all; raises with the logs on failure."""
    env = env or clean_env()
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for command in commands]
    results = []
    for command, proc in zip(commands, procs):
        try:
            output, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(command, proc.returncode, output, ""))
    failed = [r for r in results if r.returncode != 0]
    assert not failed, "\n\n".join(f"{' '.join(r.args)}\n{r.stdout[-3000:]}" for r in failed)
    return results
