import torch

from mmtool.checkpoint import atomic_write, load_model, save_model
from mmtool.errors import MmtoolError
from stage1_clip.tokenizer import SentencePieceTokenizer
import pytest


def test_round_trip_pt_and_safetensors(tmp_path):
    state = {"a.weight": torch.randn(3, 4), "b": torch.arange(5).float()}
    config = {"model": {"embed_dim": 8}, "name": "x", "list": [1, 2]}
    extras = {"tokenizer.model": b"\x00\x01binary", "note.txt": "hello"}
    save_model(tmp_path / "m.pt", "clip", config, state, extras)
    for path in (tmp_path / "m.pt", tmp_path / "m.safetensors"):
        payload = load_model(path, "clip")
        assert payload["config"] == config
        assert payload["extras"] == extras
        for key in state:
            assert torch.equal(payload["state_dict"][key], state[key])


def test_wrong_kind_and_garbage_are_one_line_errors(tmp_path):
    save_model(tmp_path / "m.pt", "clip", {}, {"w": torch.zeros(1)})
    with pytest.raises(MmtoolError, match="expected 'llava'"):
        load_model(tmp_path / "m.pt", "llava")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MmtoolError, match="junk.pt"):
        load_model(tmp_path / "junk.pt", "clip")


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def failing(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_sentencepiece_tokenizer_layout():
    tok = SentencePieceTokenizer.train(["a grinning face", "a red apple", "cat face with tears of joy"] * 30, 60)
    ids, mask = tok(["A Grinning face", ""], context_length=8)
    assert ids.shape == (2, 8)
    assert ids[0, 0] == 2 and ids[1, :2].tolist() == [2, 3] and ids[1, 2:].eq(0).all()
    assert torch.equal(mask, (ids != 0).long())
    lower, _ = tok(["a grinning face"], context_length=8)
    assert torch.equal(lower[0], ids[0])  # case-folded like CLIP
    long_ids, _ = tok(["a red apple " * 20], context_length=8)
    assert long_ids[0, -1] == 3  # truncation keeps the end-of-text token
    assert SentencePieceTokenizer(tok.model_bytes)(["a red apple"], 8)[0].equal(tok(["a red apple"], 8)[0])
