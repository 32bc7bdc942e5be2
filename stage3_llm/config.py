"""Stage-3 config: every knob of a finetune run, loaded from configs/finetune/*.yaml."""
from dataclasses import dataclass, field

from mmtool.config import CacheFolder, FilePath, NameOrPath
from mmtool.data.reading.augment import StyleAugment
from mmtool.optim import ParamGroupRule
from mmtool.train_config import TrainSettings
from stage2_projector.config import ModelConfig as AlignModelConfig


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the LLM's linear layers; `enabled: false` trains whatever param_groups leave free."""
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    # Off by default (peft's default too): one epoch sees each conversation once, and on CPU the dropout masks of
    # 7 adapters x 30 layers cost a quarter of SmolLM2-135M's training step (docs/stage23_early_runs.md, L1).
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class TowerTagSettings:
    """The tower's nearest names and groups as a text line after the image tokens (stage2_projector/tower_tags.py),
    over the names and groups of data.train's naming and group questions; 0 names and 0 groups = off."""
    names: int = 0
    groups: int = 0
    # Training conversations' tags ranked from the image embedding plus this much Gaussian noise per coordinate
    # (about the same deviation on each image-name cosine similarity); validation, chat and eval-llava tag clean
    # embeddings. 0.15 lowered every held-out score (docs/stage23_style_shift.md, C2; stage2_projector/tower_tags.py).
    train_noise: float = 0.0
    # "packed": "Tags:a;b. Groups: x; y.", one line whose names have the tokens of an answer naming them (no
    # misspelled copies); "inline": "Tags: a; b. ..."; "lines": each name on a line of its own (about 2 points
    # less yes/no). stage2_projector/tower_tags.py.
    layout: str = "packed"
    # The renderings an image's tag embedding is averaged over (stage1_clip/style_views.py); null: the CLIP's own
    # eval.style_views, so the tags are the tower baseline's answers. [] or [plain]: the plain crop alone.
    style_views: list[str] | None = None


@dataclass
class ModelConfig:
    base: FilePath | None = None  # an aligned (stage-2) or finetuned (stage-3) checkpoint: vlm.pt or its run folder
    llm: NameOrPath | None = None  # load the LLM from here instead of the spec the checkpoint records
    # Single stage, no `mmtool align` run: with base empty, a stage-1 clip.pt here and `align`'s image-token
    # settings (feature_layer, projector, image_size, clip_embedding_token) build a fresh projector that learns
    # together with LoRA from the first step (the Prismatic VLMs finding: the separate alignment can go).
    vision: FilePath | None = None
    align: AlignModelConfig = field(default_factory=AlignModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    tower_tags: TowerTagSettings = field(default_factory=TowerTagSettings)


@dataclass
class DataConfig:
    train: FilePath = "data/instruct/train.json"  # LLaVA conversation JSON / JSONL
    val: FilePath | None = "data/instruct/val.json"
    image_folder: FilePath | None = None  # image paths are relative to this folder instead of the JSON file's
    image_shards: FilePath | None = None  # or: image references are sample keys of these webdataset shards
    max_samples: int | None = None  # train on a seeded random subset of this many conversations
    val_samples: int = 64  # the first N val conversations give the val answer loss
    batch_size: int = 8  # per rank
    max_length: int = 256  # tokens per sample, image placeholders included; see stage2_projector/chat_format.py
    # A micro-batch's conversations in one row, no padding, attention within each (stage2_projector/packing.py).
    packed: bool = True
    # The frozen tower's features, computed once per image (stage2_projector/feature_cache.py): "auto" = a
    # feature_cache/ folder beside data.train, or a folder, or null (off). Used only when the tower is frozen.
    feature_cache: CacheFolder | None = "auto"
    # Each training image shown as one seeded style-shifted view (the rendering switches of the CLIP's augment:
    # grayscale, posterize, outline, contour, stroke, colour; mmtool/data/reading/augment.py), its image tokens and
    # tags alike, so training meets the unsure tower a new artist's drawings give (stage3_llm/training_data.py).
    # Validation, chat and eval-llava see images as they are. All off by default.
    style_views: StyleAugment = field(default_factory=StyleAugment)


@dataclass
class TrainConfig(TrainSettings):
    lr: float = 2e-4
    warmup_steps: int = 10
    eval_at_start: bool = True  # the val loss before any update, for the record
    # The answer loss's mean: "token" (LLaVA's) or "conversation" (each conversation's mean token loss counts once,
    # so short answers weigh as much as long descriptions; stage2_projector/answer_loss.py). Val is per token.
    answer_weighting: str = "token"
    # LoRA weights and the projector learn; the image tower and the LLM's own weights are frozen by lr 0.
    param_groups: list[ParamGroupRule] = field(default_factory=lambda: [
        ParamGroupRule(pattern=r"^vision\.", lr=0.0), ParamGroupRule(pattern=r"\.lora_"),
        ParamGroupRule(pattern=r"^llm\.", lr=0.0)])


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
