"""The layers of docs/architecture.md, enforced: import-linter checks the contracts in .importlinter."""
import configparser
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import mmtool

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(config)], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd)})


def test_the_import_contracts_are_kept():
    result = lint_imports(ROOT / ".importlinter", ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 broken" in result.stdout


def test_every_mmtool_module_has_a_layer():
    """A new module under mmtool/ must be named in the ground contract (as a source) or the app layer (as
    forbidden to the ground), or the contracts would silently not cover it."""
    contract = configparser.ConfigParser()
    contract.read(ROOT / ".importlinter")
    ground = contract["importlinter:contract:ground"]
    placed = set(ground["source_modules"].split()) | set(ground["forbidden_modules"].split())
    modules = {f"mmtool.{info.name}" for info in pkgutil.iter_modules(mmtool.__path__)}
    assert modules - placed == set(), "add these to .importlinter (ground source or app layer)"


def test_a_function_level_import_breaks_a_contract(tmp_path):
    """The check sees imports inside functions, the ones kept there so `mmtool --help` stays fast."""
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy/__init__.py").write_text("")
    (tmp_path / "toy/ground.py").write_text("def late():\n    from toy import app\n")
    (tmp_path / "toy/app.py").write_text("")
    (tmp_path / "contract.ini").write_text(
        "[importlinter]\nroot_packages =\n    toy\n\n[importlinter:contract:c]\nname = c\ntype = forbidden\n"
        "source_modules =\n    toy.ground\nforbidden_modules =\n    toy.app\n")
    result = lint_imports(tmp_path / "contract.ini", tmp_path)
    assert result.returncode == 1 and "toy.ground -> toy.app" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("path, most", [("mmtool/train_loop.py", 170), ("stage1_clip/train.py", 129),
                                        ("stage2_projector/train.py", 129), ("stage3_llm/train.py", 129)])
def test_the_loop_and_each_stages_training_stay_short(path, most):
    """One loop (about 150 lines) and a stage that supplies only what differs (issue 13): a new concern belongs in
    its own module (schedule, state, logging, data), not in the loop or a stage's train.py."""
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= most, f"{path} has {lines} lines (at most {most}): move what is not the loop's concern out"
