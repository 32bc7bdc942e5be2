"""`NAME.pt` and `NAME.safetensors` carry one content hash, checked when either loads: a changed file or twins from
two different saves are refused in one line (issue 16, finding 11)."""
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmtool import checkpoint
from mmtool.checkpoint import load_model, save_model
from mmtool.errors import MmtoolError

pytestmark = pytest.mark.faults


class Crash(BaseException):
    pass


def save(path, scale: float) -> None:
    weights = {"w": torch.full((4, 3), scale), "step": torch.tensor(7), "half": torch.ones(2, dtype=torch.bfloat16),
               "empty": torch.zeros(0)}
    save_model(path, "clip", {"scale": scale}, weights, {"tokenizer.model": b"\x00spm"})


def test_a_save_interrupted_between_the_twins_is_refused_in_one_line(tmp_path, monkeypatch):
    save(tmp_path / "m.pt", 1.0)

    def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(checkpoint, "save_file", crash)  # the .pt is replaced, then the process dies
    with pytest.raises(Crash):
        save(tmp_path / "m.pt", 2.0)
    monkeypatch.undo()
    for path in (tmp_path / "m.pt", tmp_path / "m.safetensors"):
        with pytest.raises(MmtoolError, match=r"m\.pt and m\.safetensors hold different content") as refused:
            load_model(path, "clip")
        assert "\n" not in str(refused.value)


def test_a_twin_whose_weights_changed_is_refused(tmp_path):
    save(tmp_path / "m.pt", 1.0)
    path = tmp_path / "m.safetensors"
    with safe_open(str(path), framework="pt") as opened:
        metadata = opened.metadata()
    tensors = load_file(str(path))
    tensors["w"][0, 0] = 1.5  # one weight differs, the metadata (config, extras, hash) is the same
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(MmtoolError, match=r"m\.safetensors: its content does not match the hash recorded when it "
                                          r"was saved"):
        load_model(path, "clip")
    assert load_model(tmp_path / "m.pt", "clip")["config"] == {"scale": 1.0}


def test_checkpoints_saved_before_the_hash_still_load(tmp_path):
    torch.save({"format": checkpoint.FORMAT, "kind": "clip", "config": {}, "extras": {},
                "state_dict": {"w": torch.ones(2)}}, tmp_path / "old.pt")
    assert torch.equal(load_model(tmp_path / "old.pt", "clip")["state_dict"]["w"], torch.ones(2))


def test_twins_of_one_save_load_the_same(tmp_path):
    save(tmp_path / "m.pt", 3.0)
    pt, st = load_model(tmp_path / "m.pt", "clip"), load_model(tmp_path / "m.safetensors", "clip")
    assert pt["config"] == st["config"] and pt["extras"] == st["extras"]
    assert all(torch.equal(pt["state_dict"][k], st["state_dict"][k]) for k in pt["state_dict"])
