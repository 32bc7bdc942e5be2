"""The `train:` config section every stage shares: schedule, AdamW, DeepSpeed config, logging, saving.

Each stage subclasses it, changing defaults (a stage's usual lr, what it freezes) and adding its own switches.
"""
from dataclasses import dataclass, field

from mmtool.config import DeepSpeedConfig
from mmtool.optim import ParamGroupRule
from mmtool.trackers import unknown_tracker


@dataclass
class TrainSettings:
    epochs: int = 1
    max_steps: int | None = None  # schedule length in optimizer steps instead of epochs
    accum_steps: int = 1
    # Samples per optimizer step, all ranks together; when set, accum_steps follows from the number of ranks
    # (global_batch / (ranks x data.batch_size)). A resumed run keeps the global batch it was saved with.
    global_batch: int | None = None
    lr: float = 1e-3
    min_lr_ratio: float = 0.0
    warmup_steps: int = 20
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    deepspeed: DeepSpeedConfig = "configs/deepspeed/zero2_bf16.json"
    # torch AdamW kernel: fused (one pass over all tensors), foreach (batched ops) or loop (one tensor at a time).
    optimizer_kernel: str = "fused"
    # Per-parameter lr / weight decay by name regex, first match wins; lr 0 freezes (mmtool/optim.py).
    param_groups: list[ParamGroupRule] = field(default_factory=list)
    log_every: int = 10
    # Where the train and val records go besides metrics.jsonl: tensorboard (RUN/tensorboard/), wandb, mlflow
    # (mmtool/trackers/; wandb and mlflow need `pip install 'mmtool[trackers]'`). Rank 0 only.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "mmtool"  # the wandb project / MLflow experiment the run is logged in
    eval_every: int = 0  # steps; 0 = at the end of each epoch only
    eval_at_start: bool = False  # also evaluate before the first step (the baseline the val figures move from)
    save_every: int = 0  # steps; 0 = at the end of each epoch only
    keep_states: int = 1  # DeepSpeed training states kept for --resume (older ones are deleted)
    # torch intra-op threads on CPU; -n: the usable cores less n (a core for each of n busy loader workers)
    threads: int | None = None
    # A step whose loss is non-finite on any rank is skipped (no update); this many in a row end the run.
    max_nonfinite_steps: int = 5

    def __post_init__(self):
        if problem := unknown_tracker(self.report_to):
            raise ValueError(problem)
