"""A pipeline whose training step was cut short (the process killed mid-step) continues that step with --resume on
the next run, when the same command left a saved state; otherwise the step starts over with --overwrite
(issue 16)."""
import pytest

from mmtool.pipeline import Step, run_pipeline

pytestmark = pytest.mark.faults


class Killed(BaseException):
    """The pipeline process dying mid-step: nothing after the runner call runs."""


def training_step(tmp_path, lr: str = "1e-3") -> Step:
    out = tmp_path / "clip"
    return Step("pretrain-clip", ["pretrain-clip", "--out", str(out), "--set", f"train.lr={lr}"], [out / "clip.pt"],
                trains=True)


def killed_after_a_state(tmp_path, step: Step, saved: bool = True) -> None:
    def killed(args):
        if saved:
            (tmp_path / "clip" / "state").mkdir(parents=True)
            (tmp_path / "clip" / "state" / "latest").write_text("step100")
        raise Killed()

    with pytest.raises(Killed):
        run_pipeline([step], tmp_path / "stamps", runner=killed)


def rerun(tmp_path, step: Step) -> list[list[str]]:
    commands = []

    def finish(args):
        commands.append(args)
        (tmp_path / "clip" / "clip.pt").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "clip" / "clip.pt").write_bytes(b"done")

    rows = run_pipeline([step], tmp_path / "stamps", runner=finish)
    assert rows[0]["status"] == "ran"
    return commands


def test_a_step_killed_after_saving_a_state_continues_with_resume(tmp_path):
    killed_after_a_state(tmp_path, training_step(tmp_path))
    assert rerun(tmp_path, training_step(tmp_path))[0][-1] == "--resume"
    assert run_pipeline([training_step(tmp_path)], tmp_path / "stamps", runner=None)[0]["status"] == "up to date"


def test_a_changed_command_or_no_saved_state_starts_over(tmp_path):
    killed_after_a_state(tmp_path, training_step(tmp_path))
    assert rerun(tmp_path, training_step(tmp_path, lr="2e-3"))[0][-1] == "--overwrite"  # not the run it cut short
    killed_after_a_state(tmp_path / "second", training_step(tmp_path / "second"), saved=False)
    assert rerun(tmp_path / "second", training_step(tmp_path / "second"))[0][-1] == "--overwrite"


def test_a_first_run_overwrites(tmp_path):
    assert rerun(tmp_path, training_step(tmp_path))[0][-1] == "--overwrite"
