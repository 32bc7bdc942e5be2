"""A pipeline whose training step was cut short (the process killed mid-step) continues that step with --resume on
the next run, when the same command left a saved state; otherwise the step starts over with --overwrite
(issue 16)."""
import signal
import subprocess
import sys
import time

import pytest

from mmtool.pipeline import Step, run_pipeline
from tests.helpers.processes import alive

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


PIPELINE_ALONE = """
import sys, mmtool.pipeline as pipeline
pid_file = sys.argv[1]
sleeper = f"import os, time; open({pid_file!r}, 'w').write(str(os.getpid())); time.sleep(120)"
pipeline.process_command = lambda launcher, args: [sys.executable, "-c", sleeper]
pipeline._run_mmtool(["pretrain-clip"])
"""


def test_a_step_dies_with_a_sigkilled_pipeline(tmp_path):
    """SIGKILL of the pipeline process alone (not its group): the step it started must not train on into the run
    folder that a re-run resumes in."""
    pid_file = tmp_path / "step.pid"
    pipeline = subprocess.Popen([sys.executable, "-c", PIPELINE_ALONE, str(pid_file)])
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.is_file() and pid_file.read_text()):
            assert pipeline.poll() is None and time.monotonic() < deadline, "the step never started"
            time.sleep(0.05)
        step = int(pid_file.read_text())
        pipeline.send_signal(signal.SIGKILL)
        pipeline.wait()
        killed_at = time.monotonic()
        while alive(step) and time.monotonic() - killed_at < 5:
            time.sleep(0.05)
        assert not alive(step), "the step outlived its pipeline by 5 s"
    finally:
        pipeline.kill()
        if pid_file.is_file() and pid_file.read_text():
            subprocess.run(["kill", "-9", pid_file.read_text()], stderr=subprocess.DEVNULL)
