"""Issue 16, finding 2: a fresh run never deletes or mixes with another run's files in its --out."""
import json
from pathlib import Path

import pytest

from mmtool.errors import MmtoolError
from mmtool.train_state import claim_out, save_rotating_state
from tests.stage1_clip.test_train_e2e import TINY, mmtool, train_losses

pytestmark = pytest.mark.faults


class FolderEngine:
    """Writes a state tag as an empty folder, as far as rotation can tell a DeepSpeed one."""

    def save_state(self, state_dir: Path, tag: str, client_state: dict) -> None:
        (state_dir / tag).mkdir(parents=True)


def test_rotation_keeps_the_newest_step_tags_and_ignores_other_folders(tmp_path):
    (tmp_path / "state" / "step_old").mkdir(parents=True)
    (tmp_path / "state" / "step3").mkdir()
    save_rotating_state(FolderEngine(), tmp_path, 12, {}, keep=1)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["step12", "step_old"]


def an_old_run(out: Path) -> None:
    for tag in ("step300", "step600"):
        (out / "state" / tag).mkdir(parents=True)
    (out / "state" / "latest").write_text("step600")
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 600, "split": "train", "loss": 9.0}\n')
    (out / "tokenizer.model").write_bytes(b"an old tokenizer")
    (out / "clip.pt").write_bytes(b"old weights")
    (out / "notes.txt").write_text("the user's own file")


@pytest.mark.parametrize("marker", ["config.json", "state", "metrics.jsonl"])
def test_a_fresh_run_into_a_folder_holding_a_run_is_refused(tmp_path, marker):
    (tmp_path / marker).mkdir() if marker == "state" else (tmp_path / marker).write_text("{}")
    with pytest.raises(MmtoolError, match=rf"--out {tmp_path} already holds a run \({marker}\).*--resume.*--overwrite"):
        claim_out(tmp_path, resume=False, overwrite=False)


def test_an_empty_or_unrelated_folder_is_free(tmp_path):
    claim_out(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "notes.txt").write_text("x")
    claim_out(tmp_path, resume=False, overwrite=False)
    assert (tmp_path / "notes.txt").is_file()


def test_overwrite_clears_the_runs_files_and_nothing_else(tmp_path):
    an_old_run(tmp_path)
    claim_out(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(MmtoolError, match="--resume and --overwrite"):
        claim_out(tmp_path, resume=True, overwrite=True)


@pytest.mark.parametrize("command", ["pretrain-clip", "align", "finetune"])
@pytest.mark.slow
def test_every_training_command_refuses_a_used_out_in_one_line(tmp_path, command):
    (tmp_path / "config.json").write_text("{}")
    result = mmtool(command, "--out", tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mmtool: error: --out {tmp_path} already holds a run (config.json): pass --resume to continue it or "
        "--overwrite to start over"]


@pytest.mark.slow
def test_overwrite_then_resume_a_run_in_a_used_folder(emoji_shards, tmp_path):
    """The audit's case: an old run's step300/step600 used to outrank the new run's step2 in rotation."""
    an_old_run(tmp_path)
    sets = [f"data.train={emoji_shards}/train-*.tar", "data.val=null", "data.batch_size=32", *TINY,
            "train.save_every=1", "train.keep_states=1"]
    args = ["pretrain-clip", "--config", "configs/clip/tiny_vit.yaml", "--out", tmp_path,
            *[arg for item in sets for arg in ("--set", item)]]
    mmtool(*args, "--set", "train.max_steps=2", "--overwrite")
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["latest", "step2"]
    assert sorted(train_losses(tmp_path)) == [1, 2]
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"
    assert (tmp_path / "tokenizer.model").read_bytes() != b"an old tokenizer"
    mmtool(*args, "--set", "train.max_steps=3", "--resume")
    assert sorted(train_losses(tmp_path)) == [1, 2, 3]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["max_steps"] == 3


TRAINING_COMMANDS = ("pretrain-clip", "align", "finetune")


def run_recording(steps, stamps: Path) -> list[list[str]]:
    """Runs the steps with a runner that only writes their outputs; returns the commands it was given."""
    from mmtool.pipeline import run_pipeline

    commands = []

    def write_outputs(args):
        commands.append(args)
        for step in steps:
            if step.args == [a for a in args if a != "--overwrite"]:
                for path in step.outputs:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}") if path.suffix else path.mkdir(exist_ok=True)

    run_pipeline(steps, stamps, runner=write_outputs)
    return commands


def test_pipeline_reruns_its_training_steps_with_overwrite(tmp_path):
    """A stale step's run folder holds the run it replaces: without --overwrite the command would refuse it."""
    from mmtool.pipeline import PipelineConfig, plan

    cfg = PipelineConfig(out=str(tmp_path / "run"))
    cfg.emoji.out = str(tmp_path / "emoji")
    commands = run_recording(plan(cfg), tmp_path / "stamps")
    trained = [args for args in commands if args[0] in TRAINING_COMMANDS]
    assert [args[0] for args in trained] == list(TRAINING_COMMANDS)
    assert all(args[-1] == "--overwrite" for args in trained)
    assert not any("--overwrite" in args for args in commands if args[0] not in TRAINING_COMMANDS)


def test_clip_folds_rerun_their_training_steps_with_overwrite(tmp_path):
    from mmtool.clip_folds import FoldsSpec, plan_folds

    spec = FoldsSpec(Path("configs/clip/tiny_vit.yaml"), tmp_path / "folds", ["noto", "twemoji"],
                     shards=tmp_path / "shards", build_shards=False)
    commands = run_recording(plan_folds(spec), tmp_path / "stamps")
    trained = [args for args in commands if args[0] == "pretrain-clip"]
    assert len(trained) == 2 and all(args[-1] == "--overwrite" for args in trained)
