"""A finetuned vision-language model on disk: the stage-2 checkpoint format plus the LoRA adapter beside it.

A finetune run folder holds `vlm.pt` (mmtool.checkpoint, kind "vlm": the record of the aligned model it started
from, with a "finetune" entry added, and the tower + projector weights; with full fine-tuning the LLM's weights too)
and, with LoRA, `adapter/`: a standard peft adapter of the LLM, unmerged, that peft loads on top of the base LLM
and that a further `mmtool finetune --model <this folder>` keeps training.
"""
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from mmtool.checkpoint import file_sha256, save_model
from mmtool.errors import MmtoolError
from mmtool.precision import answering_precision, dtype_of
from stage2_projector.checkpoint import KIND, SAVED_PREFIXES, VlmBundle, load_vlm, resolve_model_file
from stage3_llm.config import LoraSettings

ADAPTER_DIR = "adapter"


def add_lora(bundle: VlmBundle, settings: LoraSettings) -> None:
    """Wraps the bundle's LLM in fresh LoRA adapters (peft) on `settings.target_modules`."""
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    bundle.model.llm = get_peft_model(bundle.model.llm, config)


def load_finetuned(path: str | Path, llm=None, trainable: bool = False) -> VlmBundle:
    """An aligned or finetuned model; a LoRA adapter found beside it is loaded unmerged (trainable on request)."""
    bundle = load_vlm(path, llm)
    adapter = resolve_model_file(path).parent / ADAPTER_DIR
    finetune = bundle.record.get("finetune", {})
    if finetune.get("lora"):
        restore_interrupted_swap(adapter)
        recorded = finetune.get("adapter_sha256")  # absent in models saved before it was recorded
        if recorded and folder_sha256(adapter) != recorded:
            raise MmtoolError(f"{adapter}: not the adapter saved with {resolve_model_file(path)} (another save's, "
                              "or changed since); copy the run folder whole or finetune again")
        bundle.model.llm = PeftModel.from_pretrained(bundle.model.llm, str(adapter), is_trainable=trainable)
    return bundle


def merged_llm(bundle: VlmBundle):
    """The bundle's LLM with any LoRA adapter folded into its weights (stage 3 keeps adapters unmerged)."""
    llm = bundle.model.llm
    return llm.merge_and_unload() if isinstance(llm, PeftModel) else llm


def load_for_answering(path: str | Path, llm=None, precision: str = "bf16") -> VlmBundle:
    """load_finetuned, ready_to_answer: a bad `precision` is refused before the (slow) load."""
    dtype_of(precision)
    bundle = load_finetuned(path, llm)
    ready_to_answer(bundle, precision)
    return bundle


def ready_to_answer(bundle: VlmBundle, precision: str = "bf16") -> None:
    """LoRA folded into the LLM (fewer matmuls per token) and the LLM cast to `precision` (mmtool/precision.py). The
    tower, projector and tower tags stay float32: the image tokens and tag lines are the same at either precision."""
    bundle.model.llm = merged_llm(bundle).to(dtype_of(answering_precision(precision)))


def save_finetuned(out: Path, record: dict, state_dict: dict[str, torch.Tensor], llm, lora: bool) -> None:
    """vlm.pt (tower + projector, or every weight under full fine-tuning) and, with LoRA, adapter/ taken from
    the gathered `state_dict` (so it works under ZeRO-3, where the module's own weights are partitioned)."""
    if lora:
        kept = {name: tensor for name, tensor in state_dict.items() if name.startswith(SAVED_PREFIXES)}
        llm_state = {name.removeprefix("llm."): tensor for name, tensor in state_dict.items()
                     if name.startswith("llm.")}
        # The image token's embedding row is never used (features replace it): no need to save embeddings.
        save_whole_folder(out / ADAPTER_DIR, lambda tmp: llm.save_pretrained(str(tmp), state_dict=llm_state,
                                                                             save_embedding_layers=False))
        # vlm.pt is written after the adapter and names it: a crash between the two leaves a pair load refuses
        record = {**record, "finetune": {**record.get("finetune", {}),
                                         "adapter_sha256": folder_sha256(out / ADAPTER_DIR)}}
    else:
        kept = state_dict
    save_model(resolve_model_file(out), KIND, record, kept)


def save_whole_folder(folder: Path, write) -> None:
    """write(tmp) fills a temporary sibling, which then takes the folder's place: a crash while writing (peft
    writes file by file) leaves the previous folder as it was and nothing half-written under its name."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_swap(folder)
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # a crash's half-written (never committed) copy
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    old = tmp.with_suffix(".old")
    try:
        write(tmp)
        if folder.exists():
            os.rename(folder, old)  # a directory cannot be renamed over a non-empty one: the old one steps aside
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)  # only once the new folder is in place


def restore_interrupted_swap(folder: Path) -> None:
    """A crash between save_whole_folder's two renames leaves no `folder`, the previous one beside it as
    `.NAME.*.old`: that one is still the folder the rest of the save (vlm.pt) belongs with, so it goes back."""
    if folder.exists():
        return
    set_aside = sorted(folder.parent.glob(f".{folder.name}.*.old"), key=lambda path: path.stat().st_mtime)
    if set_aside:
        os.rename(set_aside[-1], folder)


def folder_sha256(folder: Path) -> str:
    """Hash of a folder's files: relative paths and bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0".encode())
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()
