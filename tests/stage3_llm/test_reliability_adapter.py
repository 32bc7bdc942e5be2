"""A finetuned model's `adapter/` and `vlm.pt` are one unit: a crash while the adapter folder is being swapped is
repaired on the next load, and an adapter from another save is refused in one line (issue 16, finding 11)."""
import os
import shutil

import pytest
import torch

from mmtool.config import load_config
from mmtool.errors import MmtoolError
from stage2_projector.checkpoint import build_vlm, save_vlm
from stage2_projector.config import AlignConfig
from stage3_llm.checkpoint import ADAPTER_DIR, add_lora, load_finetuned, save_finetuned
from stage3_llm.config import LoraSettings
from tests.helpers.tiny_vlm import save_tiny_clip, save_tiny_llm

pytestmark = pytest.mark.faults


class Crash(BaseException):
    pass


@pytest.fixture(scope="module")
def lora_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter")
    bundle = build_vlm(load_config(AlignConfig, None, [f"model.llm={save_tiny_llm(root / 'llm')}"]),
                       save_tiny_clip(root / "clip.pt"))
    save_vlm(root / "align" / "vlm.pt", bundle.record, bundle.model.state_dict())
    add_lora(bundle, LoraSettings(r=2, target_modules=["q_proj", "v_proj"]))
    return bundle


def save(bundle, out, seed: int) -> dict:
    torch.manual_seed(seed)
    state = {name: torch.randn_like(tensor) if "lora_" in name else tensor
             for name, tensor in bundle.model.state_dict().items()}
    record = {**bundle.record, "finetune": {"lora": True}}
    save_finetuned(out, record, state, bundle.model.llm, lora=True)
    return {name: tensor for name, tensor in state.items() if "lora_A" in name}


def lora_weights(bundle) -> dict:
    return {name: tensor for name, tensor in bundle.model.state_dict().items() if "lora_A" in name}


def test_a_crash_between_the_adapter_renames_is_repaired_on_load(lora_bundle, tmp_path, monkeypatch):
    first = save(lora_bundle, tmp_path, seed=1)
    real_rename, calls = os.rename, []

    def rename_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old adapter stepped aside; the new one is not in place yet
            raise Crash()
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_then_crash)
    with pytest.raises(Crash):
        save(lora_bundle, tmp_path, seed=2)
    monkeypatch.undo()
    assert not (tmp_path / ADAPTER_DIR).exists()
    loaded = lora_weights(load_finetuned(tmp_path))  # vlm.pt is the first save's: so is the adapter put back
    assert loaded.keys() and all(torch.equal(loaded[k], first[k]) for k in first)


def test_an_adapter_from_another_save_is_refused_in_one_line(lora_bundle, tmp_path):
    save(lora_bundle, tmp_path / "a", seed=1)
    save(lora_bundle, tmp_path / "b", seed=2)
    shutil.rmtree(tmp_path / "a" / ADAPTER_DIR)
    shutil.copytree(tmp_path / "b" / ADAPTER_DIR, tmp_path / "a" / ADAPTER_DIR)
    with pytest.raises(MmtoolError, match=r"adapter: not the adapter saved with .*vlm\.pt") as refused:
        load_finetuned(tmp_path / "a")
    assert "\n" not in str(refused.value)
