"""Stage-2 config: every knob of an align run, loaded from configs/align/*.yaml."""
from dataclasses import dataclass, field

from mmtool.config import CacheFolder, FilePath, NameOrPath
from mmtool.optim import ParamGroupRule
from mmtool.train_config import TrainSettings


@dataclass
class ModelConfig:
    vision: FilePath | None = None  # a stage-1 clip.pt (or --clip on the command line)
    llm: NameOrPath = "llama"  # local HF folder, GGUF file, alias in configs/llm/registry.yaml, or hub id
    # Which image-tower hidden state feeds the projector: Python indexing into [embeddings, block 1, ..., block L]
    # (ViT) or [stem, block 0, ..., block 15, head] (EfficientNet-Lite0). -2 = second to last, as LLaVA.
    feature_layer: int = -2
    # Average-pool the layer's feature map to token_grid x token_grid image tokens (null: the map's own grid, e.g.
    # 3x3 at 96 px, 5x5 at 160 px): a high-resolution tower without more LLM tokens (stage2_projector/features.py).
    token_grid: int | None = None
    projector: str = "mlp2x_gelu"  # linear | mlpNx_gelu (N linear layers with GELU between)
    # Input size of stages 2-3 (chat, eval); null = the size the tower was trained at. A conv tower runs at any
    # size: EfficientNet-Lite0 gives (size / 32)^2 tokens at the last layers, 4x that at blocks 10-14.
    image_size: int | None = None
    # One more image token: CLIP's own image embedding (pooled, projected, normalised), the vector its zero-shot
    # answers come from (stage2_projector/features.py).
    clip_embedding_token: bool = False


@dataclass
class DataConfig:
    train: FilePath = "data/emoji/train-*.tar"
    val: FilePath | None = "data/emoji/val-*.tar"
    train_samples: int | None = None  # read from the shards' meta.json when empty
    val_samples: int = 128  # the first N val samples give the val answer loss
    batch_size: int = 16  # per rank
    workers: int = 1
    shuffle_buffer: int = 1000
    resampled: bool = False
    random_resized_crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    max_length: int = 256  # tokens per sample, image placeholders included
    # A micro-batch's samples in one row, no padding, attention within each sample (stage2_projector/packing.py).
    packed: bool = True
    # The frozen tower's features, computed once per image (stage2_projector/feature_cache.py): "auto" = a
    # feature_cache/ folder beside the train shards, or a folder, or null (off). Used only when the tower is
    # frozen by train.param_groups and random_resized_crop_scale is [1, 1].
    feature_cache: CacheFolder | None = "auto"
    # The user turn is "<image>\n" + one of these (picked per sample, fixed by its key); the answer is the caption.
    instructions: list[str] = field(default_factory=lambda: [
        "Describe this image briefly.", "What is shown in this image?", "Give a short caption for this image.",
        "What does this emoji show?"])


@dataclass
class TrainConfig(TrainSettings):
    # Only the projector learns: the image tower and the LLM are frozen by lr 0.
    param_groups: list[ParamGroupRule] = field(default_factory=lambda: [
        ParamGroupRule(pattern=r"^vision\.", lr=0.0), ParamGroupRule(pattern=r"^llm\.", lr=0.0)])


@dataclass
class AlignConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
