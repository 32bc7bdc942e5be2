"""The training engine every stage shares: DeepSpeed (ZeRO 0-3, bf16/fp16), AdamW, schedule, checkpoints."""
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmtool import distributed
from mmtool.checkpoint import atomic_write
from mmtool.cpu_features import check_precision, without_emulated_bf16
from mmtool.deepspeed_import import import_deepspeed
from mmtool.errors import MmtoolError
from mmtool.nonfinite import HoldableAdamW, HoldableSchedule, any_rank
from mmtool.optim import ParamGroupRule, WarmRestart, build_param_groups, schedule_with_restart


# torch.optim.AdamW arguments per kernel; all three compute the same update.
ADAMW_KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


@dataclass
class OptimSettings:
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    grad_clip: float
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0
    rules: list[ParamGroupRule] = field(default_factory=list)
    kernel: str = "fused"  # torch AdamW implementation: fused | foreach | loop (see bench/RESULTS.md)
    restart: WarmRestart | None = None  # a second warm-up and cosine for the last steps

    @classmethod
    def from_train(cls, train, total_steps: int, restart: WarmRestart | None = None) -> "OptimSettings":
        """From a stage's `train:` section (mmtool.train_config.TrainSettings) and the run's length."""
        return cls(lr=train.lr, weight_decay=train.weight_decay, betas=tuple(train.betas), eps=train.eps,
                   grad_clip=train.grad_clip, warmup_steps=train.warmup_steps, total_steps=total_steps,
                   min_lr_ratio=train.min_lr_ratio, rules=train.param_groups, kernel=train.optimizer_kernel,
                   restart=restart)


def load_deepspeed_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MmtoolError(f"DeepSpeed config not found: {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MmtoolError(f"{path}: invalid JSON ({err})") from None
    check_precision(config, str(path))
    return without_emulated_bf16(config, str(path))


class TrainEngine:
    """A DeepSpeed engine plus the bits every stage needs around it (lr, precision, state export, and no update
    from a step whose loss was non-finite on some rank)."""

    def __init__(self, model: torch.nn.Module, ds_config_path: str | Path, micro_batch_size: int,
                 optim: OptimSettings, accum_steps: int = 1, load_universal: bool = False):
        """load_universal: the state to resume from is a universal checkpoint (mmtool/world_resize.py)."""
        deepspeed = import_deepspeed()

        distributed.init_distributed()
        ds_config = load_deepspeed_config(ds_config_path)
        ds_config.update(
            train_micro_batch_size_per_gpu=micro_batch_size,
            gradient_accumulation_steps=accum_steps,
            gradient_clipping=optim.grad_clip,
            steps_per_print=10**12,
            # A torch AdamW instead of DeepSpeed's: its fused CPU op compiles for ~50 s at start-up.
            zero_allow_untested_optimizer=True,
        )
        ds_config.pop("train_batch_size", None)
        if load_universal:
            ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
        groups = build_param_groups(model, optim.lr, optim.weight_decay, optim.rules)
        if not groups:
            raise MmtoolError("nothing to train: every parameter is frozen (check train.param_groups)")
        self.group_names = [group.pop("names") for group in groups]
        if optim.kernel not in ADAMW_KERNELS:
            raise MmtoolError(f"train.optimizer_kernel: unknown {optim.kernel!r} (known: {', '.join(ADAMW_KERNELS)})")
        self._adamw = HoldableAdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                    **ADAMW_KERNELS[optim.kernel])
        schedule = schedule_with_restart(optim.warmup_steps, optim.total_steps, optim.min_lr_ratio,
                                         optim.restart)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=self._adamw, config=ds_config,
            lr_scheduler=lambda opt: HoldableSchedule(opt, schedule, held=lambda: self._adamw.hold))
        self.zero_stage = self.engine.zero_optimization_stage()
        self._nonfinite_loss = torch.tensor(False, device=self.device)  # this rank, since the last update
        self.update_skipped = False  # the last optimizer step was held back: a rank saw a non-finite loss

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def param_dtype(self) -> torch.dtype:
        """bf16/fp16 when DeepSpeed keeps the weights in half precision, else float32."""
        return next(self.engine.module.parameters()).dtype

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = True) -> None:
        """scale_wrt_gas=False when `loss` already carries the right share of the accumulated gradient.
        A non-finite `loss` (or GradCache's surrogate of it) on any rank holds back the coming update."""
        self._nonfinite_loss = self._nonfinite_loss | ~torch.isfinite(loss.detach()).all()
        self.engine.backward(loss, scale_wrt_gas=scale_wrt_gas)

    def step(self) -> None:
        """Ends a micro-batch; at the accumulation boundary, updates the weights unless some rank's loss since the
        last update was non-finite (then weights, moments and the lr schedule stay as they were)."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        if boundary:
            self._adamw.hold = any_rank(self._nonfinite_loss)  # every rank takes the same decision
        self.engine.step()
        if boundary:
            self.update_skipped, self._adamw.hold = self._adamw.hold, False
            self._nonfinite_loss = torch.zeros_like(self._nonfinite_loss)

    def current_lr(self) -> float:
        return max(group["lr"] for group in self.engine.optimizer.param_groups)

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def save_state(self, directory: Path, tag: str, client_state: dict) -> None:
        """DeepSpeed's training state (trained weights, optimizer, scheduler) for exact resume.

        Frozen weights are left out: they never change, the model is rebuilt with them before loading, and a
        frozen LLM would otherwise make every state hundreds of MB (540 MB with SmolLM2-135M)."""
        self.check_finite_weights()
        # `latest` is written here, atomically, once every rank's files are complete: DeepSpeed's own write
        # truncates it first, so a kill at that moment would leave no state to resume from.
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state,
                                    exclude_frozen_parameters=True, save_latest=False)
        distributed.barrier()
        if distributed.is_main():
            atomic_write(Path(directory) / "latest", lambda tmp: tmp.write_text(tag))

    def load_state(self, directory: Path, tag: str | None = None) -> dict:
        """Loads state `tag` (default: the latest) under `directory`; returns the client state saved with it."""
        from mmtool.safe_state import install_safe_loader

        install_safe_loader(self.engine)
        # Not strict: the frozen weights are absent from the state by design (see save_state).
        path, client_state = self.engine.load_checkpoint(str(directory), tag=tag, load_module_strict=False)
        if path is None:
            raise MmtoolError(f"--resume: no saved state under {directory} (the run stopped before its first state "
                              "save: pass --overwrite to start it over)")
        return client_state

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """All weights in float32 on CPU, gathered from ZeRO-3 partitions; None on ranks other than 0.

        Every rank must call this (ZeRO-3 gathers collectively)."""
        self.check_finite_weights()
        if self.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        if not distributed.is_main():
            return None
        return {name: tensor.detach().to("cpu", torch.float32).clone() for name, tensor in state.items()}

    def check_finite_weights(self) -> None:
        """Refuses (on every rank) to go on with a NaN or inf among the trained weights: they are never saved."""
        local = [owned_values(p, distributed.rank()) for p in self.engine.module.parameters() if p.requires_grad]
        bad = torch.tensor(any(not torch.isfinite(t).all() for t in local), device=self.device)
        if any_rank(bad):
            raise MmtoolError("the trained weights hold NaN or inf values; nothing was saved")


def owned_values(param: torch.nn.Parameter, rank: int) -> torch.Tensor:
    """The values of `param` that `rank` holds: all of it, or under ZeRO-3 its own slice of the flat weight.

    A ZeRO-3 slice is padded to an equal length on every rank, and the padding of the last slices is never
    written (DeepSpeed allocates it with torch.empty), so it can hold any bits, NaN included."""
    shard = getattr(param, "ds_tensor", None)
    if shard is None:
        return param
    start = shard.ds_numel * rank  # mmtool partitions over all ranks (one data-parallel group)
    return shard.narrow(0, 0, max(0, min(shard.ds_numel, param.ds_numel - start)))
