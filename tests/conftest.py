"""Shared fixtures: a small real emoji shard set, built once per test session."""
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One GGUF conversion cache for the session and its subprocesses, never the user's (stage2_projector/gguf_cache.py).
SESSION_CACHE = None if "MMTOOL_CACHE" in os.environ else tempfile.mkdtemp(prefix="mmtool-test-cache-")
os.environ.setdefault("MMTOOL_CACHE", SESSION_CACHE or "")


def pytest_sessionfinish(session, exitstatus):
    if SESSION_CACHE:
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def emoji_shards(tmp_path_factory):
    """~700 real Noto emoji (train + val by base emoji) in webdataset shards."""
    from mmtool.data.building.emoji import build_emoji

    out = tmp_path_factory.mktemp("emoji")
    build_emoji(out, limit=700, shard_size=200)
    return out


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(emoji_shards, tmp_path_factory):
    """A tiny untrained ViT CLIP (tokenizer trained on emoji_shards' captions) as clip.pt + clip.safetensors."""
    from tests.helpers.tiny_clip import write_tiny_clip

    return write_tiny_clip(emoji_shards, tmp_path_factory.mktemp("tiny_clip") / "clip.pt")


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct with the `<image>` token added, loaded once (~7 s to convert on 2 idle cores).
    Shared: do not modify it in place (deep-copy the model before wrapping or training its weights)."""
    from stage2_projector.llm import load_llm

    return load_llm("llama")
