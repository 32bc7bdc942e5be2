"""`mmtool pipeline`: the plan uses real commands, and steps re-run exactly when they or their inputs change."""
import json
from pathlib import Path

import pytest
import typer.main

from mmtool.cli import app
from mmtool.config import load_config
from mmtool.errors import MmtoolError
from mmtool.pipeline import PipelineConfig, Step, headline, plan, run_pipeline, steps_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("config", ["configs/pipeline/emoji.yaml", "configs/pipeline/emoji_full.yaml"])
def test_every_planned_step_parses_as_an_mmtool_command(monkeypatch, config):
    monkeypatch.chdir(ROOT)
    steps = plan(load_config(PipelineConfig, config))
    root = typer.main.get_command(app)
    seen = set()
    for step in steps:
        assert set(step.after) <= seen, f"{step.name} runs before a step it reads"
        seen.add(step.name)
        command, args = root, list(step.args)
        while hasattr(command, "commands"):  # `data emoji` is a group and a subcommand
            command = command.commands[args.pop(0)]
        command.make_context(step.name, args)  # raises on an unknown option or a missing argument
    names = [step.name for step in steps]
    assert names.index("pretrain-clip") < names.index("finetune") < names.index("eval-llava:val")


def test_single_stage_plans_no_align_step_and_finetunes_from_the_clip_checkpoint(monkeypatch):
    monkeypatch.chdir(ROOT)
    steps = plan(load_config(PipelineConfig, "configs/pipeline/emoji.yaml"))  # the main job is single-stage
    by_name = {step.name: step for step in steps}
    assert "align" not in by_name
    finetune = by_name["finetune"]
    assert finetune.args[1:3] == ["--clip", "runs/pipeline/clip/clip.pt"] and "--model" not in finetune.args
    assert finetune.after == ["pretrain-clip", "instructions"]
    root = typer.main.get_command(app)
    root.commands["finetune"].make_context("finetune", list(finetune.args[1:]))
    evaluation = by_name["eval-llava:heldout_train"].args
    assert evaluation[evaluation.index("--blind") + 1] == "shuffled"  # the config's one blind copy


def test_two_stage_aligns_first_and_finetunes_the_aligned_model(monkeypatch):
    monkeypatch.chdir(ROOT)
    steps = plan(load_config(PipelineConfig, "configs/pipeline/emoji.yaml", ["align.enabled=true"]))
    names = [step.name for step in steps]
    assert names.index("pretrain-clip") < names.index("align") < names.index("finetune")
    finetune = steps[names.index("finetune")]
    assert finetune.args[1:3] == ["--model", "runs/pipeline/align"] and finetune.after == ["align", "instructions"]


def test_until_keeps_the_steps_up_to_the_named_one_and_refuses_an_unknown_name(monkeypatch):
    monkeypatch.chdir(ROOT)
    steps = plan(load_config(PipelineConfig, "configs/pipeline/emoji.yaml"))
    assert steps_until(steps, None) == steps
    assert [step.name for step in steps_until(steps, "eval-clip:val")] == ["emoji-shards", "pretrain-clip",
                                                                          "eval-clip:val"]
    with pytest.raises(MmtoolError, match=r"^--until clip: no such step in this pipeline \(its steps: emoji-shards, "
                                          r"pretrain-clip, eval-clip:val, "):
        steps_until(steps, "clip")


def fake_steps(tmp_path: Path) -> tuple[list[Step], Path]:
    config = tmp_path / "stage.yaml"
    config.write_text("lr: 1\n")
    a, b, c = (tmp_path / name for name in ("a.out", "b.out", "c.json"))
    steps = [Step("a", ["a"], [a]),
             Step("b", ["b"], [b], configs=[config], after=["a"]),
             Step("c", ["c"], [c], after=["b"], metrics=c)]
    return steps, config


def writer(tmp_path: Path, log: list):
    def run(args):
        log.append(args[0])
        out = tmp_path / {"a": "a.out", "b": "b.out", "c": "c.json"}[args[0]]
        out.write_text(json.dumps({"image_to_text_R@1": 0.25}))
    return run


def test_skips_up_to_date_steps_and_reruns_what_changed_downstream(tmp_path):
    steps, config = fake_steps(tmp_path)
    stamps, log = tmp_path / "stamps", []
    rows = run_pipeline(steps, stamps, runner=writer(tmp_path, log))
    assert log == ["a", "b", "c"] and [r["status"] for r in rows] == ["ran"] * 3
    assert rows[2]["result"] == "image_to_text_R@1 0.250"

    log.clear()
    assert [r["status"] for r in run_pipeline(steps, stamps, runner=writer(tmp_path, log))] == ["up to date"] * 3
    assert log == []

    config.write_text("lr: 2\n")  # b's config changed: b and c (which reads b) re-run, a does not
    run_pipeline(steps, stamps, runner=writer(tmp_path, log))
    assert log == ["b", "c"]

    log.clear()
    (tmp_path / "a.out").unlink()  # a's output is gone: a re-runs, and so does everything after it
    run_pipeline(steps, stamps, runner=writer(tmp_path, log))
    assert log == ["a", "b", "c"]

    log.clear()
    run_pipeline(steps, stamps, force=True, runner=writer(tmp_path, log))
    assert log == ["a", "b", "c"]


def test_a_stale_export_folder_is_replaced_but_a_folder_the_pipeline_did_not_write_is_not(tmp_path):
    folder, config = tmp_path / "export", tmp_path / "stage.yaml"
    config.write_text("lr: 1\n")
    steps = [Step("export", ["export"], [folder], configs=[config], replaces_outputs=True)]

    def export(args):  # like mmtool's exporters: a non-empty --out is refused
        if folder.exists():
            raise MmtoolError(f"--out {folder}: already exists and is not empty")
        folder.mkdir()
        (folder / "model.safetensors").write_text(config.read_text())

    folder.mkdir()
    (folder / "mine.txt").write_text("the user's")
    with pytest.raises(MmtoolError, match="already exists"):
        run_pipeline(steps, tmp_path / "stamps", runner=export)
    assert (folder / "mine.txt").read_text() == "the user's"

    (folder / "mine.txt").unlink()
    folder.rmdir()
    run_pipeline(steps, tmp_path / "stamps", runner=export)
    config.write_text("lr: 2\n")  # the step is stale: its own earlier export gives way to the new one
    assert [r["status"] for r in run_pipeline(steps, tmp_path / "stamps", runner=export)] == ["ran"]
    assert (folder / "model.safetensors").read_text() == "lr: 2\n"


def test_a_failed_step_keeps_earlier_steps_and_is_retried(tmp_path):
    steps, _ = fake_steps(tmp_path)
    stamps, log = tmp_path / "stamps", []
    run = writer(tmp_path, log)

    def fail_at_b(args):
        if args[0] == "b":
            raise MmtoolError("b failed")
        run(args)

    with pytest.raises(MmtoolError, match="b failed"):
        run_pipeline(steps, stamps, runner=fail_at_b)
    log.clear()
    run_pipeline(steps, stamps, runner=run)
    assert log == ["b", "c"]


def test_a_step_that_writes_nothing_is_an_error_not_a_success(tmp_path):
    steps, _ = fake_steps(tmp_path)
    with pytest.raises(MmtoolError, match="a finished without writing .*a.out"):
        run_pipeline(steps, tmp_path / "stamps", runner=lambda args: None)
    assert not (tmp_path / "stamps" / "a.json").exists()


def test_dry_run_writes_no_stamps(tmp_path):
    steps, _ = fake_steps(tmp_path)
    rows = run_pipeline(steps, tmp_path / "stamps", runner=lambda args: None, record=False)
    assert [r["status"] for r in rows] == ["to run"] * 3
    assert not list((tmp_path / "stamps").iterdir())


def test_a_missing_stage_config_is_named(tmp_path):
    steps, config = fake_steps(tmp_path)
    config.unlink()
    with pytest.raises(MmtoolError, match="step b: config file not found: .*stage.yaml"):
        run_pipeline(steps, tmp_path / "stamps", runner=writer(tmp_path, []))


def test_a_clip_steps_headline_shows_retrieval_and_both_zero_shot_group_figures(tmp_path):
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"image_to_text_R@1": 0.136, "text_to_image_R@1": 0.135, "samples": 3307,
                                   "zero_shot_group_acc": 0.268, "zero_shot_group_from_names_acc": 0.766}))
    assert headline(metrics) == ("image_to_text_R@1 0.136, text_to_image_R@1 0.135, zero_shot_group_acc 0.268, "
                                 "zero_shot_group_from_names_acc 0.766")
    assert headline(tmp_path / "missing.json") == ""
