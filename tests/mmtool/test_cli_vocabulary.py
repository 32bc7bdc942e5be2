"""One vocabulary across commands: --version, --print-config, --set, one flag per artifact and meaning, --help order."""
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from mmtool.cli import app
from mmtool.config import load_config, to_yaml
from mmtool.errors import MmtoolError
from mmtool.pipeline import PipelineConfig
from stage1_clip.config import ClipConfig
from stage2_projector.config import AlignConfig
from stage3_llm.config import FinetuneConfig

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=True)


def all_commands(group=None, prefix=""):
    """(name, click command) for every command and sub-command."""
    group = group or typer.main.get_command(app)
    for name in group.list_commands(None):
        command = group.get_command(None, name)
        if hasattr(command, "commands"):
            yield from all_commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"mmtool {importlib.metadata.version('mmtool')}"


def test_help_lists_commands_in_workflow_order():
    group = typer.main.get_command(app)
    assert group.list_commands(None) == [
        "data", "tokenizer", "pretrain-clip", "eval-clip", "clip-folds", "align", "finetune", "eval-llava", "chat",
        "export-vision", "export-clip", "export-llava", "index", "search", "serve", "ask", "pipeline", "plot"]
    panels = [getattr(group.get_command(None, name), "rich_help_panel", None) for name in group.list_commands(None)]
    assert None not in panels


@pytest.mark.parametrize("command, cls, section, extra", [
    ("pretrain-clip", ClipConfig, "clip", []), ("align", AlignConfig, "align", []),
    ("finetune", FinetuneConfig, "finetune", []), ("pipeline", PipelineConfig, "pipeline", []),
    ("clip-folds", ClipConfig, "clip", ["--out", "folds"])])
def test_print_config_shows_defaults_yaml_and_set_then_exits(tmp_path, monkeypatch, command, cls, section, extra):
    monkeypatch.chdir(tmp_path)
    recipe = {"clip": "tiny_vit", "align": "emoji", "finetune": "emoji", "pipeline": "emoji"}[section]
    override = "eval.per_task=7" if section == "pipeline" else "train.seed=7"
    result = run(command, "--config", recipe, "--set", override, "--print-config", *extra)
    assert result.exit_code == 0, result.output
    assert result.output == to_yaml(load_config(cls, recipe, [override], section=section))
    printed = yaml.safe_load(result.output)
    assert (printed["eval"]["per_task"] if section == "pipeline" else printed["train"]["seed"]) == 7
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def test_a_typo_in_set_suggests_the_key():
    result = run("pretrain-clip", "--config", "tiny_vit", "--set", "train.epoch=2", "--print-config")
    assert isinstance(result.exception, MmtoolError)
    assert "did you mean 'epochs'" in str(result.exception)


def test_an_old_flag_name_still_works_but_not_with_the_new_one():
    result = run("align", "--clip", "a.pt", "--vision", "b.pt", "--print-config")
    assert "--clip given twice" in str(result.exception)
    result = run("align", "--vision", "old.pt", "--print-config")
    assert yaml.safe_load(result.output)["model"]["vision"] == "old.pt"
    result = run("pipeline", "emoji", "--print-config")  # the config as an argument, as before --config
    assert result.exit_code == 0 and yaml.safe_load(result.output)["out"] == "runs/pipeline"


def test_a_missing_clip_checkpoint_names_the_flag():
    result = run("export-vision", "--out", "x")
    assert "--clip is required" in str(result.exception)


def test_one_flag_name_per_meaning():
    """--json is a switch wherever shown; the old artifact names (--vision, --shards of data instructions, --model
    for CLIP weights) are hidden; every command that reads a config takes --set and --print-config."""
    for name, command in all_commands():
        shown = {opt: param for param in command.params if not getattr(param, "hidden", False)
                 for opt in param.opts}
        if "--json" in shown:
            assert shown["--json"].is_flag, name
        assert "--vision" not in shown and "--any-vision" not in shown, name
        if name == "data instructions":
            assert "--shards" not in shown
        if name in ("index build", "index add", "search", "serve"):
            assert "--model" not in shown and "--clip" in shown, name
        if "--config" in shown:
            assert {"--set", "--print-config"} <= set(shown), name


@pytest.mark.parametrize("quiet", [False, True])
@pytest.mark.slow
def test_deepspeeds_cpu_accelerator_warning_is_silenced(quiet):
    import torch

    if torch.cuda.is_available():
        pytest.skip("DeepSpeed warns only where it finds no accelerator")
    probe = ("from mmtool.cli_options import quiet_deepspeed; " + ("quiet_deepspeed(); " if quiet else "")
             + "from deepspeed.accelerator import get_accelerator; get_accelerator()")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert ("Setting accelerator to CPU" in done.stderr + done.stdout) is not quiet


def test_old_and_new_spellings_of_eval_clip_write_the_same_figures(tiny_clip_checkpoint, emoji_shards, tmp_path):
    data = str(emoji_shards / "val-*.tar")
    old = run("eval-clip", str(tiny_clip_checkpoint), "--data", data, "--json", str(tmp_path / "old.json"))
    new = run("eval-clip", "--clip", str(tiny_clip_checkpoint), "--data", data,
              "--out-json", str(tmp_path / "new.json"))
    assert old.exit_code == new.exit_code == 0, (old.output, new.output)
    assert (tmp_path / "old.json").read_text() == (tmp_path / "new.json").read_text()
