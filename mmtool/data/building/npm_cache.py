"""npm packages as plain folders of files: `npm pack NAME@VERSION` into a cache, then extracted (no install scripts)."""
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from mmtool.errors import MmtoolError


def npm_package(name: str, version: str, cache: Path) -> Path:
    """The folder holding the package's files (package.json, ...), fetched and extracted on first use."""
    folder = cache / f"{name.lstrip('@').replace('/', '-')}-{version}"
    if (folder / "package.json").is_file():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise MmtoolError(f"npm is not on PATH: it fetches {name}@{version} into {cache} (run scripts/setup.sh)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        done = subprocess.run([npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--silent"],
                              capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            why = " ".join(done.stderr.split()[:40]) or f"exit status {done.returncode}"
            raise MmtoolError(f"npm pack {name}@{version} (into {cache}) failed: {why}")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        try:  # a rename, so a half-extracted package is never found
            os.rename(Path(tmp) / "package", folder)
        except OSError:
            if not (folder / "package.json").is_file():  # else another build fetched it meanwhile
                raise
    return folder
