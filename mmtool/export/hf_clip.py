"""mmtool's ViT and text transformer towers as Hugging Face CLIP models (same math, renamed weights).

Both share one block layout: pre-norm, fused qkv, exact-GELU MLP. transformers' CLIP keeps q, k and v as separate
projections, so the fused weight is split in three; everything else maps one to one. The text tower pools at the
first eos token, which transformers' CLIPTextModel does when `eos_token_id` is not the legacy 2 (mmtool's eos is 3).
"""
import torch
from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

from mmtool.data.reading.images import CLIP_MEAN, CLIP_STD
from mmtool.errors import MmtoolError
from stage1_clip.attention import Transformer
from stage1_clip.config import TextConfig, VisionConfig
from stage1_clip.tokenizer import BOS_ID, EOS_ID, PAD_ID


def _encoder_state(transformer: Transformer, prefix: str) -> dict[str, torch.Tensor]:
    state = {}
    for i, block in enumerate(transformer.blocks):
        layer = f"{prefix}encoder.layers.{i}"
        q, k, v = block.attn.qkv.weight.detach().chunk(3, dim=0)  # each [D, D]: rows are q, k, v outputs in turn
        qb, kb, vb = block.attn.qkv.bias.detach().chunk(3, dim=0)  # each [D]
        for name, weight, bias in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb),
                                   ("out_proj", block.attn.out.weight, block.attn.out.bias)):
            state[f"{layer}.self_attn.{name}.weight"] = weight
            state[f"{layer}.self_attn.{name}.bias"] = bias
        for hf_name, module in (("layer_norm1", block.ln_1), ("layer_norm2", block.ln_2),
                                ("mlp.fc1", block.mlp.fc), ("mlp.fc2", block.mlp.proj)):
            state[f"{layer}.{hf_name}.weight"] = module.weight
            state[f"{layer}.{hf_name}.bias"] = module.bias
    return state


def _layer_norm_state(norm, name: str) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": norm.weight, f"{name}.bias": norm.bias}


def _require(cfg, tower_type: str, where: str) -> None:
    if cfg.type != tower_type:
        raise MmtoolError(f"{where}: a {cfg.type!r} tower has no Hugging Face CLIP equivalent (only {tower_type!r}); "
                          f"export it with --format safetensors")


def require_linear_head(model_cfg) -> None:
    for field, head in (("head", model_cfg.head), ("text_head", model_cfg.text_projection_head)):
        if head != "linear":
            raise MmtoolError(f"model.{field}: a {head!r} head has no Hugging Face CLIP equivalent (only "
                              f"'linear'); export it with --format safetensors")


def vision_config_to_hf(cfg: VisionConfig, projection_dim: int) -> CLIPVisionConfig:
    _require(cfg, "vit", "model.vision.type")
    return CLIPVisionConfig(hidden_size=cfg.width, intermediate_size=int(cfg.width * cfg.mlp_ratio),
                            projection_dim=projection_dim, num_hidden_layers=cfg.layers,
                            num_attention_heads=cfg.heads, num_channels=3, image_size=cfg.image_size,
                            patch_size=cfg.patch_size, hidden_act="gelu", layer_norm_eps=1e-5)


def vision_tower_to_hf(tower, cfg: VisionConfig) -> tuple[CLIPVisionConfig, dict[str, torch.Tensor]]:
    """A stage-1 VisionTransformer as (config, state dict) for transformers' CLIPVisionModel: keys `embeddings.*`,
    `pre_layrnorm.*`, `encoder.*`, `post_layernorm.*`, as LLaVA's `model.vision_tower.` also names them."""
    config = vision_config_to_hf(cfg, projection_dim=cfg.width)
    state = {"embeddings.class_embedding": tower.class_embedding,
             "embeddings.patch_embedding.weight": tower.conv1.weight,
             "embeddings.position_embedding.weight": tower.positional_embedding,
             **_layer_norm_state(tower.ln_pre, "pre_layrnorm"),  # transformers' spelling
             **_encoder_state(tower.transformer, ""),
             **_layer_norm_state(tower.ln_post, "post_layernorm")}
    return config, _detached(state)


def vision_model_with_projection_to_hf(tower, cfg: VisionConfig, image_projection: torch.nn.Linear
                                       ) -> tuple[CLIPVisionConfig, dict[str, torch.Tensor]]:
    """The tower plus CLIP.image_projection, for CLIPVisionModelWithProjection (and the image half of CLIPModel)."""
    config, tower_state = vision_tower_to_hf(tower, cfg)
    config.projection_dim = image_projection.out_features
    state = {f"vision_model.{k}": v for k, v in tower_state.items()}
    state["visual_projection.weight"] = image_projection.weight.detach().float().clone()
    return config, state


def _detached(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous().clone() for k, v in state.items()}


def text_config_to_hf(cfg: TextConfig, vocab_size: int, projection_dim: int) -> CLIPTextConfig:
    _require(cfg, "transformer", "model.text.type")
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=cfg.width,
                          intermediate_size=int(cfg.width * cfg.mlp_ratio), projection_dim=projection_dim,
                          num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                          max_position_embeddings=cfg.context_length, hidden_act="gelu", layer_norm_eps=1e-5,
                          pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)


def text_tower_to_hf(tower, cfg: TextConfig, text_projection: torch.nn.Linear | None = None
                     ) -> tuple[CLIPTextConfig, dict[str, torch.Tensor]]:
    """A stage-1 TextTransformer as (config, state dict) for CLIPTextModel's `text_model` (+ `text_projection` if
    given, for CLIPTextModelWithProjection and CLIPModel)."""
    projection_dim = text_projection.out_features if text_projection is not None else cfg.width
    config = text_config_to_hf(cfg, tower.token_embedding.num_embeddings, projection_dim)
    state = {"text_model.embeddings.token_embedding.weight": tower.token_embedding.weight,
             "text_model.embeddings.position_embedding.weight": tower.positional_embedding,
             **_encoder_state(tower.transformer, "text_model."),
             **_layer_norm_state(tower.ln_final, "text_model.final_layer_norm")}
    if text_projection is not None:
        state["text_projection.weight"] = text_projection.weight
    return config, _detached(state)


def clip_to_hf(model, model_cfg) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """A stage-1 CLIP (ViT image tower, transformer text tower) as (config, state dict) for CLIPModel."""
    vision_config, vision_state = vision_model_with_projection_to_hf(model.vision, model_cfg.vision,
                                                                     model.image_projection)
    text_config, text_state = text_tower_to_hf(model.text, model_cfg.text, model.text_projection)
    # CLIPModel has no clamp: export the value training actually used.
    logit_scale = model.logit_scale.detach().clamp(max=model.max_logit_scale).float()
    config = CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
                        projection_dim=model_cfg.embed_dim, logit_scale_init_value=logit_scale.item())
    return config, {**vision_state, **text_state, "logit_scale": logit_scale.reshape(()).clone()}


def image_processor(image_size: int):
    """mmtool's eval transform in transformers' terms: RGB on white, shorter side to image_size (bicubic), centre
    crop, CLIP mean/std. Two differences remain: mmtool applies EXIF orientation first, and when the resized long
    side exceeds the crop by 3 mod 4 pixels mmtool's rounded crop offset is one pixel past transformers' floor."""
    # Saved as CLIPImageProcessor, the name every transformers version reads; without torchvision, transformers 5
    # runs it with its PIL backend, the same Pillow bicubic resize mmtool uses.
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(do_resize=True, size={"shortest_edge": image_size}, resample=3,  # PIL bicubic
                              do_center_crop=True, crop_size={"height": image_size, "width": image_size},
                              do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                              image_mean=CLIP_MEAN.tolist(), image_std=CLIP_STD.tolist(), do_convert_rgb=True)
