"""The flags every `mmtool` command spells the same way, and the order `mmtool --help` lists commands in.

One name per artifact: `--clip` a stage-1 CLIP checkpoint, `--model` a stage-2/3 model (vlm.pt or its run folder),
`--llm` a language model, an index folder is the first argument, `--data` what a command reads, `--out` the folder
it writes. `--out-json FILE` also writes a command's results as JSON; `--json` prints JSON instead of a table.
Renamed flags stay accepted, hidden, so that scripts keep working.
"""
import importlib.metadata
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from mmtool import recipes
from mmtool.errors import MmtoolError

# --help panels, in the order of the workflow.
DATA, STAGE1, STAGE2, STAGE3, EXPORT, SEARCH, PIPELINE, RUNS = PANELS = (
    "Data", "Stage 1: CLIP", "Stage 2: alignment", "Stage 3: instruction tuning", "Export", "Search and RAG",
    "Pipeline", "Runs")


class WorkflowGroup(TyperGroup):
    """Lists commands panel by panel in PANELS order, a panel's sub-command groups first (`index` before `search`);
    Typer otherwise lists groups after every command."""

    def list_commands(self, ctx) -> list[str]:
        def rank(name: str) -> tuple[int, bool]:
            command = self.commands[name]
            panel = getattr(command, "rich_help_panel", None)
            return PANELS.index(panel) if panel in PANELS else len(PANELS), not isinstance(command, TyperGroup)

        return sorted(super().list_commands(ctx), key=rank)


def version() -> str:
    try:
        return importlib.metadata.version("mmtool")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def quiet_deepspeed() -> None:
    """Drop DeepSpeed's "Setting accelerator to CPU ... unable to detect it" warning, printed by every process of a
    CPU run: on CPU there is nothing to detect. (Its logger is named "DeepSpeed"; a filter set before DeepSpeed is
    imported stays on it.)"""
    logging.getLogger("DeepSpeed").addFilter(
        lambda record: not record.getMessage().startswith("Setting accelerator to CPU"))


def config_option(section: str, what: str = "Config") -> typer.Option:
    names = ", ".join(recipes.recipe_names(section))
    return typer.Option("--config", help=f"{what}: a YAML file, or a bundled recipe by name ({names})")


SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, repeatable: "
                                                                       "--set train.lr=1e-4")]
PipelineSetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a pipeline key, repeatable: --set eval.per_task=20 --set 'align.set=[train.max_steps=50]'")]
PrintConfigOption = Annotated[bool, typer.Option("--print-config", help="Print the resolved config (defaults, then "
                                                                        "the YAML, then --set) as YAML and exit")]
OutJsonOption = Annotated[Optional[Path], typer.Option("--out-json", help="Also write the results here (JSON)")]
OldJsonPath = Annotated[Optional[Path], typer.Option("--json", hidden=True)]  # before --out-json
PrecisionOption = Annotated[str, typer.Option(
    help="The LLM's precision when answering: bf16 (as stage 3 trains; faster on CPUs with bf16 instructions, "
         "slower on CPUs without them) or fp32")]
JsonSwitch = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def one_of(value, old_value, flag: str):
    """A flag's value, or the value given under its old (hidden) name or position; never both."""
    if value is not None and old_value is not None:
        raise MmtoolError(f"{flag} given twice (also under its old name)")
    return value if value is not None else old_value


def required(value, flag: str):
    if value is None:
        raise MmtoolError(f"{flag} is required")
    return value


def load_or_print(cls, config, overrides: list[str] | None, section: str, print_config: bool):
    """The command's config; with --print-config, print it and stop."""
    from mmtool.config import load_config, to_yaml

    cfg = load_config(cls, config, list(overrides or []), section=section)
    if print_config:
        print(to_yaml(cfg), end="")
        raise typer.Exit()
    return cfg
