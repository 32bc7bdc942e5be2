"""DeepSpeed training states load without running pickled code.

DeepSpeed reads its state files with `torch.load(weights_only=False)`, so a crafted `state/` folder could run
anything on `--resume`. The engine's loader is replaced by a weights-only one that also admits the few plain
DeepSpeed classes its states hold (found by `torch.serialization.get_unsafe_globals_in_checkpoint` on states of
every configs/deepspeed/*.json): anything else in a state file is refused before any of it is built.
"""
import pickle

import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from mmtool.errors import MmtoolError

DEEPSPEED_STATE_CLASSES = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_state_file(path: str, map_location=None):
    """torch.load(weights_only=True) with DeepSpeed's state classes allowed; refuses in one line otherwise."""
    try:
        with torch.serialization.safe_globals(DEEPSPEED_STATE_CLASSES):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = next((line.split("error: ")[-1].strip() for line in str(err).splitlines()
                      if "Unsupported global" in line), str(err).splitlines()[0])
        raise MmtoolError(f"--resume: {path}: refused, it holds an object that loading would have to run "
                          f"({found.split(' was not')[0]}); only tensors, plain data and DeepSpeed's state "
                          "classes are loaded") from None


def install_safe_loader(deepspeed_engine) -> None:
    """Every state file the engine reads for `load_checkpoint` goes through its checkpoint engine's `load`."""
    deepspeed_engine.checkpoint_engine.load = load_state_file
