"""Where a finetune run starts: an aligned (or finetuned) checkpoint, or, single stage, a stage-1 CLIP checkpoint
whose tower gets a fresh projector that learns together with LoRA (no separate `mmtool align` run)."""
from dataclasses import replace
from pathlib import Path

from mmtool.errors import MmtoolError
from stage2_projector.checkpoint import VlmBundle, build_vlm, resolve_model_file
from stage2_projector.config import AlignConfig
from stage3_llm.checkpoint import load_finetuned
from stage3_llm.config import FinetuneConfig


def start_file(cfg: FinetuneConfig) -> Path:
    """The file the run starts from (its sha256 is what --resume checks): model.base's vlm.pt or model.vision."""
    if cfg.model.base:
        base_file = resolve_model_file(cfg.model.base)
        if not base_file.is_file():
            raise MmtoolError(f"--model {cfg.model.base}: no {base_file.name} there (run mmtool align first)")
        return base_file
    if cfg.model.vision:
        if not Path(cfg.model.vision).is_file():
            raise MmtoolError(f"model.vision {cfg.model.vision}: no such stage-1 checkpoint")
        return Path(cfg.model.vision)
    raise MmtoolError("model.base: give the aligned checkpoint (--model ckpt/align), or model.vision a stage-1 "
                      "clip.pt for single-stage training (--clip ckpt/clip/clip.pt)")


def start_bundle(cfg: FinetuneConfig, base_file: Path) -> VlmBundle:
    if cfg.model.base:
        return load_finetuned(base_file, cfg.model.llm, trainable=cfg.model.lora.enabled)
    return fresh_bundle(cfg)


def fresh_bundle(cfg: FinetuneConfig) -> VlmBundle:
    """Single stage: the stage-1 tower, a new projector and the LLM, as `mmtool align` would start them."""
    align_model = replace(cfg.model.align, vision=cfg.model.vision, llm=cfg.model.llm or cfg.model.align.llm)
    return build_vlm(AlignConfig(model=align_model), cfg.model.vision)
