"""`mmtool pipeline` starts a training stage under its `launcher:` (none / torchrun / deepspeed with its arguments):
the command lines, the config checks, and a stage run on 2 local processes through run_pipeline."""
import sys

import pytest

from mmtool.config import load_config
from mmtool.errors import MmtoolError
from mmtool.pipeline import PipelineConfig, Step, fingerprint, plan, run_pipeline
from mmtool.pipeline_launch import LauncherSpec, process_command
from tests.helpers.distributed import free_port
from tests.stage1_clip.test_train_e2e import TINY, train_losses


def test_each_launcher_wraps_the_mmtool_command():
    args = ["pretrain-clip", "--out", "o"]
    assert process_command(None, args) == [sys.executable, "-m", "mmtool", *args]
    assert process_command(LauncherSpec("torchrun", ["--nproc-per-node", "2"]), args) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "mmtool", *args]
    assert process_command(LauncherSpec("deepspeed", ["--num_gpus", "8"]), args) == [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "8", "--module", "mmtool", *args]


def test_a_stage_launcher_comes_from_the_pipeline_config_and_changes_the_fingerprint():
    sets = ["clip.launcher.kind=torchrun", "clip.launcher.args=[--nproc-per-node, '2']"]
    steps = {step.name: step for step in plan(load_config(PipelineConfig, "configs/pipeline/emoji.yaml", sets))}
    assert steps["pretrain-clip"].launcher == LauncherSpec("torchrun", ["--nproc-per-node", "2"])
    assert steps["finetune"].launcher == LauncherSpec()  # other stages keep one process
    alone = Step(**{**vars(steps["pretrain-clip"]), "launcher": None})
    assert fingerprint(alone, {"emoji-shards": "x"}) != fingerprint(steps["pretrain-clip"], {"emoji-shards": "x"})


@pytest.mark.parametrize("setting, words", [
    ("align.launcher.kind=mpirun", "align.launcher.kind: 'mpirun' is not one of none, torchrun, deepspeed"),
    ("finetune.launcher.args=[--nproc-per-node, '2']", "finetune.launcher.args: ['--nproc-per-node', '2'] given "
                                                         "without a launcher"),
])
def test_a_bad_launcher_is_named_in_one_line(setting, words):
    with pytest.raises(MmtoolError, match=None) as err:
        plan(load_config(PipelineConfig, "configs/pipeline/emoji.yaml", [setting]))
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["torchrun", "deepspeed"])
def test_run_pipeline_trains_a_stage_on_two_processes(kind, emoji_shards, tmp_path, capfd):
    out = tmp_path / "clip"
    sets = [f"data.train={emoji_shards}/train-*.tar", "data.val=null", *TINY, "data.batch_size=8",
            "train.max_steps=2"]
    if kind == "torchrun":
        launcher = LauncherSpec("torchrun", ["--nproc-per-node", "2", "--master-port", str(free_port())])
    else:  # a one-host hostfile runs locally once the ssh check is skipped
        (tmp_path / "hostfile").write_text("localhost slots=2\n")
        launcher = LauncherSpec("deepspeed", ["--hostfile", str(tmp_path / "hostfile"), "--no_ssh_check",
                                              "--master_addr", "127.0.0.1", "--master_port", str(free_port())])
    step = Step("pretrain-clip", ["pretrain-clip", "--config", "tiny_vit", "--out", str(out),
                                  *[arg for item in sets for arg in ("--set", item)]],
                [out / "clip.pt"], trains=True, launcher=launcher)
    rows = run_pipeline([step], tmp_path / "stamps")
    assert rows[0]["status"] == "ran" and sorted(train_losses(out)) == [1, 2]
    assert "global batch 2 rank(s) x 8 x 1 accumulated" in capfd.readouterr().out
