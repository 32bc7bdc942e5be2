"""mmtool as users install it: a wheel built from the checkout, installed (not editable) into a fresh venv, run from
an unrelated folder. The fresh venv borrows the heavy dependencies from the project's venv through a .pth line
(which adds that folder to sys.path without activating the editable install it holds)."""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

CHECKOUT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def checkout_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=CHECKOUT,
                            capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if (CHECKOUT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv's bin folder, its site-packages)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    for name in checkout_files():  # a copy, so that building leaves nothing in the checkout
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CHECKOUT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "wheel", source], check=True)
    wheel, = (root / "wheel").glob("mmtool-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv}))
    (site / "project-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*pip, "--python", venv / "bin" / "python", "install", "--no-deps", wheel], check=True)
    return venv / "bin", site


def mmtool(bin_folder: Path, cwd: Path, *args: str) -> str:
    done = subprocess.run([bin_folder / "mmtool", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_installed_command_runs_from_an_unrelated_folder(installed, tmp_path):
    bin_folder, site = installed
    assert mmtool(bin_folder, tmp_path, "--version").strip() == "mmtool 0.1.0"
    printed = yaml.safe_load(mmtool(bin_folder, tmp_path, "pretrain-clip", "--config", "tiny_vit", "--set",
                                    "train.epochs=1", "--print-config"))
    assert printed["train"]["epochs"] == 1
    assert printed["data"]["train"] == "data/emoji/train-*.tar"  # the user's working folder
    # the DeepSpeed config is the installed package's copy, not the checkout's
    assert Path(printed["train"]["deepspeed"]) == site / "mmtool/configs/deepspeed/zero0_bf16.json"
    assert list(tmp_path.iterdir()) == []


def test_the_installed_package_reads_its_own_configs(installed, tmp_path):
    bin_folder, site = installed
    probe = ("import mmtool, stage2_projector.llm as llm; from mmtool import recipes; "
             "print(mmtool.__file__); print(recipes.bundled_root()); print(llm.resolve_llm('llama').path)")
    done = subprocess.run([bin_folder / "python", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    package_file, configs, llama = done.stdout.splitlines()
    assert Path(package_file).is_relative_to(site)
    assert Path(configs) == site / "mmtool/configs"
    assert (Path(configs) / "llm/registry.yaml").is_file()
    assert Path(llama).is_dir()  # the `llama` alias resolved through the installed registry
    names = yaml.safe_load(mmtool(bin_folder, tmp_path, "pipeline", "--config", "emoji", "--print-config"))
    assert Path(names["clip"]["config"]) == Path(configs) / "clip/default.yaml"
