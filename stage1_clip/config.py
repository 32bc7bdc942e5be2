"""Stage-1 config: every knob of a CLIP run, loaded from configs/clip/*.yaml."""
from dataclasses import dataclass, field

from mmtool.config import DeepSpeedConfig, FilePath, NameOrPath
from mmtool.data.reading.augment import StyleAugment
from mmtool.train_config import TrainSettings


@dataclass
class VisionConfig:
    type: str = "vit"  # vit | resnet | efficientnet_lite0 | hf
    image_size: int = 64
    # ViT
    patch_size: int = 8
    width: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    # ResNet: blocks per stage; `width` is the stem width, `heads` the attention-pool heads (which projects
    # straight to model.embed_dim)
    stage_blocks: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    # efficientnet_lite0: start from the bundled ImageNet weights (a checkpoint's own weights replace them)
    pretrained: bool = True
    # hf: a local Hugging Face CLIP / SigLIP folder, image encoder or dual model (or a bundled alias)
    hf_path: NameOrPath | None = None
    grad_checkpointing: bool = False
    # vit: share of patch tokens dropped at random in training (FLIP), in [0, 1); CLS is always kept
    patch_dropout: float = 0.0


@dataclass
class TextConfig:
    type: str = "transformer"  # transformer | hf
    context_length: int = 77
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    # type: hf -- a local Hugging Face encoder folder (or a bundled alias, see mmtool.pretrained)
    hf_path: NameOrPath | None = None
    hf_pooling: str = "mean"  # mean | cls
    grad_checkpointing: bool = False


@dataclass
class TokenizerConfig:
    path: FilePath | None = None  # a sentencepiece .model; trained on the training captions when empty
    vocab_size: int = 4096
    train_samples: int = 200_000  # captions read to train it


@dataclass
class ModelConfig:
    embed_dim: int = 256
    head: str = "linear"  # linear | mlp: each tower's projection into the embedding (stage1_clip/heads.py)
    text_head: str | None = None  # the text tower's, when it differs from `head`
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    @property
    def text_projection_head(self) -> str:
        return self.head if self.text_head is None else self.text_head


@dataclass
class LossConfig:
    type: str = "clip"  # clip | siglip
    init_logit_scale: float = 2.659260036932778  # ln(1/0.07)
    max_logit_scale: float = 4.605170185988092  # ln(100)
    init_logit_bias: float = -10.0  # siglip only
    # Compute the loss tile by tile (never the N x N matrix; SigLIP passes text blocks around the ranks) once the
    # global batch is large; empty = the dense loss.
    tile_size: int | None = None
    # Hard negatives: for each image, this many nearest non-matching training captions (under the current model,
    # refreshed every data.hard_negative_refresh steps) join its image->text softmax; clip loss only, without
    # tile_size or accum_steps > 1 (stage1_clip/hard_negatives.py).
    mined_negatives: int = 0


@dataclass
class LowResConfig:
    """Low-resolution pretraining, then a short fine-tuning at full size (as CLIPA): the first `steps` optimizer steps
    read every image at `image_size` under their own warm-up and cosine; the rest of the run starts the lr schedule
    again (`warmup_steps`, then cosine to the end, peak `lr_ratio` x each group's lr) at model.vision.image_size,
    as do its evaluations and the checkpoint. steps 0: one size and one schedule."""
    image_size: int = 0
    steps: int = 0
    warmup_steps: int = 20
    lr_ratio: float = 1.0

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps is a number of optimizer steps, got {self.steps}")
        if self.steps and self.image_size < 1:
            raise ValueError(f"image_size is in pixels, got {self.image_size} (with steps {self.steps})")
        if self.warmup_steps < 0 or self.lr_ratio <= 0:
            raise ValueError(f"warmup_steps >= 0 and lr_ratio > 0, got {self.warmup_steps} and {self.lr_ratio}")


@dataclass
class DataConfig:
    train: FilePath = "data/emoji/train-*.tar"
    val: FilePath | None = "data/emoji/val-*.tar"
    train_samples: int | None = None  # read from the shards' meta.json when empty
    batch_size: int = 128  # per rank
    workers: int = 2
    shuffle_buffer: int = 2000
    resampled: bool = False
    random_resized_crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    # Style-shift augmentations (background, rotation, colour jitter, grayscale, posterize, outline, contour,
    # stroke; caption templates and keyword dropout), all off by default: see mmtool/data/reading/augment.py.
    augment: StyleAugment = field(default_factory=StyleAugment)
    label_fields: list[str] = field(default_factory=lambda: ["group", "subgroup"])
    # Most steps at a smaller input, the last ones at model.vision.image_size (efficientnet_lite0 only: it takes any
    # input size); the trunk cache keeps one set of views per size.
    low_res: LowResConfig = field(default_factory=LowResConfig)
    # Frozen towers computed once (stage1_clip/feature_cache.py), in feature_cache/ beside the train shards: the
    # locked text tower per caption, the frozen image trunk per image view. Applies only where the param groups
    # freeze a tower (or EfficientNet-Lite0's first stages) and batches stream (batch_composition random).
    feature_cache: bool = True
    # With the image-trunk cache: fixed augmented views per image, one picked per sample and epoch (instead of a
    # fresh augmentation every epoch); fewer views, more cache hits and less augmentation diversity.
    cached_views: int = 2
    # Hard negatives (stage1_clip/hard_negatives.py): random (streamed) | same_label (each batch from one
    # batch_label group) | knn (clusters of the current model's embeddings, rebuilt every hard_negative_refresh
    # steps). same_label, knn and loss.mined_negatives hold the training set in memory, up to max_indexed_samples.
    batch_composition: str = "random"
    batch_label: str = "subgroup"
    hard_negative_refresh: int = 50
    max_indexed_samples: int = 200_000


@dataclass
class TrainConfig(TrainSettings):
    epochs: int = 10
    # Micro-batches per optimizer step: every sample of the effective batch (data.batch_size x accum_steps x
    # ranks) is contrasted with every other, through gradient caching (stage1_clip/grad_cache.py).
    accum_steps: int = 1
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    deepspeed: DeepSpeedConfig = "configs/deepspeed/fp32.json"
    keep_states: int = 2
    compile: bool = False  # torch.compile both towers (the first steps pay for compilation)


@dataclass
class EvalConfig:
    # Zero-shot prompt ensemble: each class name is put into every template, embeddings averaged.
    templates: list[str] = field(default_factory=lambda: [
        "an emoji of {}.", "a {} emoji.", "an icon of {}.", "a drawing of {}.", "{}"])
    batch_size: int = 256
    # Test-time style views (stage1_clip/style_views.py): an image's embedding is the mean over these renderings,
    # e.g. [plain, grayscale, outline, contour, stroke], in eval-clip; empty: the plain crop alone. The val
    # evaluations inside a training run use the plain crop.
    style_views: list[str] = field(default_factory=list)

    def __post_init__(self):
        from stage1_clip.style_views import check_views

        check_views(self.style_views)


@dataclass
class ClipConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def image_size_at(self, step: int) -> int:
        """The input size of optimizer step `step` (0-based): data.low_res's for its first steps."""
        return self.data.low_res.image_size if step < self.data.low_res.steps else self.model.vision.image_size
