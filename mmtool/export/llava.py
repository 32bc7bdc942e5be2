"""An aligned (or instruction-tuned, LoRA merged) mmtool model as a Hugging Face LlavaForConditionalGeneration
folder: weights, config, tokenizer, image processor and chat template, loadable by plain transformers.

The layouts agree by construction: image tokens are `<image>` placeholders (one per patch feature), LLaVA's
"default" feature selection drops the CLS token as mmtool does, `vision_feature_layer` indexes the same list of
hidden states, and mlp2x_gelu is LLaVA's two-layer projector. Only ViT towers have a transformers counterpart.
"""
import json
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from mmtool.errors import MmtoolError
from mmtool.export.hf_clip import image_processor, vision_tower_to_hf
from mmtool.export.model_card import write_model_card
from mmtool.config import from_dict
from mmtool.progress import StepBar
from stage1_clip.config import ClipConfig
from stage3_llm.checkpoint import load_finetuned, merged_llm


def llava_state_dict(bundle, llm) -> dict[str, torch.Tensor]:
    """mmtool names -> LlavaForConditionalGeneration names (vision tower, projector, language model, lm head)."""
    vision_cfg = from_dict(ClipConfig, bundle.record["clip_config"], where="clip_config").model.vision
    _, vision_state = vision_tower_to_hf(bundle.model.vision.tower, vision_cfg)
    projector = bundle.model.projector
    state = {f"model.vision_tower.{name}": tensor for name, tensor in vision_state.items()}
    state.update({"model.multi_modal_projector.linear_1.weight": projector[0].weight,
                  "model.multi_modal_projector.linear_1.bias": projector[0].bias,
                  "model.multi_modal_projector.linear_2.weight": projector[2].weight,
                  "model.multi_modal_projector.linear_2.bias": projector[2].bias})
    state.update({f"model.language_model.{name}": tensor for name, tensor in llm.model.state_dict().items()})
    state["lm_head.weight"] = llm.lm_head.weight
    return {name: tensor.detach().float().contiguous() for name, tensor in state.items()}


def export_llava(bundle, out: Path) -> Path:
    """Writes `out` (a Hugging Face folder) from an aligned or finetuned bundle; returns it."""
    record = bundle.record
    if record["vision"]["type"] != "vit":
        raise MmtoolError(f"export-llava: the {record['vision']['type']!r} image tower has no transformers "
                          "LLaVA counterpart (only ViT towers export; CNN towers stay in mmtool's format)")
    if record["vision"].get("clip_embedding_token"):
        raise MmtoolError("export-llava: the CLIP embedding token (model.clip_embedding_token) has no "
                          "transformers LLaVA counterpart")
    if record["vision"].get("token_grid"):
        raise MmtoolError("export-llava: pooled image tokens (model.token_grid) have no transformers LLaVA "
                          "counterpart")
    if record["projector"]["type"] != "mlp2x_gelu":
        raise MmtoolError(f"export-llava: projector {record['projector']['type']!r} does not fit LLaVA's "
                          "two-layer projector (train with model.projector=mlp2x_gelu)")
    clip_config = from_dict(ClipConfig, record["clip_config"], where="clip_config")
    vision_cfg = clip_config.model.vision
    vision_config, _ = vision_tower_to_hf(bundle.model.vision.tower, vision_cfg)
    llm = merged_llm(bundle)
    text_config = llm.config
    config = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
                         image_token_id=record["llm"]["image_token_id"],
                         image_seq_length=record["vision"]["num_image_tokens"],
                         vision_feature_layer=record["vision"]["feature_layer"],
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         multimodal_projector_bias=True, tie_word_embeddings=text_config.tie_word_embeddings)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    state = llava_state_dict(bundle, llm)
    if text_config.tie_word_embeddings:
        state.pop("lm_head.weight")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in missing if not (text_config.tie_word_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise MmtoolError(f"export-llava: weight names do not line up (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    model.tie_weights()
    model.generation_config = llm.generation_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor = LlavaProcessor(image_processor=image_processor(vision_cfg.image_size), tokenizer=bundle.tokenizer,
                               patch_size=vision_cfg.patch_size, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token=record["llm"]["image_token"],
                               chat_template=bundle.tokenizer.chat_template)
    processor.save_pretrained(out)
    return out


def export_llava_folder(model: Path, out: Path, llm: str | None = None) -> tuple[Path, Path]:
    """`mmtool export-llava`: load the model (the LLM takes most of the time), write the folder and its card, with a
    bar on a terminal; returns (the folder, its README.md)."""
    with StepBar("export-llava", total=3) as bar:
        with bar.step(f"read {Path(model).name}"):
            bundle = load_finetuned(model, llm)
        with bar.step("merge + write hf"):
            folder = export_llava(bundle, out)
        with bar.step("model card"):
            card = write_llava_card(bundle, model, out)
    return folder, card


def write_llava_card(bundle, model: Path, out: Path) -> Path:
    """The export's model card, from the stage-2/3 run folder `model` names (its config, metrics, evaluations)."""
    run = Path(model) if Path(model).is_dir() else Path(model).parent
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    model_section = config.setdefault("model", {})
    model_section["llm"] = model_section.get("llm") or bundle.record["llm"]["spec"]  # a stage-3 run reuses stage 2's
    return write_model_card(out, "llava", "hf", run, config, Path(model), upstream=[bundle.record["clip_config"]])
