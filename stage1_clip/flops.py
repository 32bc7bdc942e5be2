"""Model FLOPs of a CLIP training step, counted analytically (for MFU in bench/gpu_bench.py).

Convention: only matrix products count, 2 FLOPs per multiply-add (LayerNorm, softmax, GELU, the optimizer are
left out, as in the usual MFU definition). Attention scores and the weighted sum count the full T x T square
even for the causal text tower: that is the work SDPA kernels schedule, and what `FlopCounterMode` reports.

A pre-norm transformer layer over T tokens of width D with MLP hidden M = mlp_ratio * D does, per sample:
    qkv projection     2 * T * D * 3D
    scores q k^T       2 * T * T * D
    weighted sum  a v  2 * T * T * D
    out projection     2 * T * D * D
    MLP                2 * T * D * M * 2
  = 8 T D^2 + 4 T D M + 4 T^2 D                      (= 24 T D^2 + 4 T^2 D for mlp_ratio 4)
Image tower (ViT, N = (image_size / patch)^2 patches, T = N + 1 with the class token):
    patch embedding    2 * N * (3 p^2) * D,  layers as above,  projection 2 * D * E (+ 2 * D * D for an mlp head)
Text tower (T = context_length): layers as above, projection as the image tower's (the token lookup is free).
Loss on a batch of B: image->text and text->image logits, 2 * (2 * B * B * E).
Training = forward + backward; the backward of a product costs two products (input and weight gradients), except
the patch embedding, whose input (the pixels) needs no gradient: train = 3 * forward - patch embedding.
"""
from stage1_clip.config import ModelConfig
from stage1_clip.heads import head_flops


def transformer_layer_flops(tokens: int, width: int, mlp_ratio: float) -> int:
    """Forward FLOPs of one pre-norm block for one sample."""
    hidden = int(width * mlp_ratio)
    return 8 * tokens * width ** 2 + 4 * tokens * width * hidden + 4 * tokens ** 2 * width


def patch_embedding_flops(cfg: ModelConfig) -> int:
    vision = cfg.vision
    patches = (vision.image_size // vision.patch_size) ** 2
    return 2 * patches * 3 * vision.patch_size ** 2 * vision.width


def image_tower_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the ViT and its projection, per image."""
    vision = cfg.vision
    if vision.type != "vit":
        raise ValueError(f"FLOP count covers the vit image tower only, not {vision.type!r}")
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    layers = vision.layers * transformer_layer_flops(tokens, vision.width, vision.mlp_ratio)
    return patch_embedding_flops(cfg) + layers + head_flops(cfg.head, vision.width, cfg.embed_dim)


def text_tower_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the text transformer and its projection, per caption of context_length tokens."""
    text = cfg.text
    if text.type != "transformer":
        raise ValueError(f"FLOP count covers the transformer text tower only, not {text.type!r}")
    layers = text.layers * transformer_layer_flops(text.context_length, text.width, text.mlp_ratio)
    return layers + head_flops(cfg.text_projection_head, text.width, cfg.embed_dim)


def loss_flops(cfg: ModelConfig, batch: int) -> int:
    return 2 * (2 * batch * batch * cfg.embed_dim)


def forward_flops(cfg: ModelConfig, batch: int) -> int:
    return batch * (image_tower_flops(cfg) + text_tower_flops(cfg)) + loss_flops(cfg, batch)


def train_step_flops(cfg: ModelConfig, batch: int) -> int:
    """Forward + backward FLOPs of one training step on `batch` image-caption pairs."""
    return 3 * forward_flops(cfg, batch) - batch * patch_embedding_flops(cfg)
