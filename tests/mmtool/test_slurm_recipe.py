"""scripts/slurm/: the per-node body of train.sbatch, run here with Slurm's variables set by hand (one machine, CPU,
gloo): one node of 2 processes, and 2 "nodes" of one process each, train and write their checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.distributed import free_port
from tests.helpers.multinode_launch import TIMEOUT_S
from tests.stage1_clip.test_train_e2e import TINY, clean_env, train_losses

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

BODY = Path("scripts/slurm/node.sh")


def test_the_sbatch_script_runs_the_body_once_per_node():
    sbatch = Path("scripts/slurm/train.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in sbatch
    assert 'srun --kill-on-bad-exit=1 bash "${SLURM_SUBMIT_DIR:-.}/scripts/slurm/node.sh" "$@"' in sbatch
    for script in ("scripts/slurm/train.sbatch", BODY):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def slurm_env(nodes: int, node: int, per_node: int, port: int) -> dict:
    env = clean_env()
    env.update(SLURM_JOB_NUM_NODES=str(nodes), SLURM_NODEID=str(node), SLURM_JOB_ID="4242",
               SLURM_GPUS_ON_NODE=str(per_node), MMTOOL_RDZV_HOST="127.0.0.1", MMTOOL_RDZV_PORT=str(port),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")  # `python` is this venv's
    return env


@pytest.mark.parametrize("nodes, per_node", [(1, 2), (2, 1)])
def test_the_node_body_trains_with_slurm_variables(emoji_shards, tmp_path, nodes, per_node):
    out = tmp_path / "run"
    sets = [f"data.train={emoji_shards}/train-*.tar", "data.val=null", *TINY, "data.batch_size=16",
            "train.max_steps=2"]
    command = ["bash", str(BODY), "pretrain-clip", "--config", "tiny_vit", "--out", str(out),
               *[arg for item in sets for arg in ("--set", item)]]
    port = free_port()
    if nodes == 1:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                                env=slurm_env(1, 0, per_node, port))
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout + result.stderr
    else:
        # Two bodies at once, as srun starts them on two nodes.
        logs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=slurm_env(nodes, node, per_node, port)) for node in range(nodes)]
        output = "".join(proc.communicate(timeout=TIMEOUT_S)[0] for proc in logs)
        assert all(proc.returncode == 0 for proc in logs), output[-3000:]
    assert "global batch 2 rank(s) x 16 x 1 accumulated" in output
    assert sorted(train_losses(out)) == [1, 2] and (out / "clip.pt").is_file()
