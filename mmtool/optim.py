"""Parameter groups and the learning-rate schedule: freezing and per-module lr are data, not code."""
import math
import re
from dataclasses import dataclass

import torch

# Weight decay shrinks weights towards zero; for these it only hurts (CLIP / open_clip practice).
_NO_DECAY = re.compile(r"(^|\.)(bias|logit_scale|logit_bias|positional_embedding|class_embedding|token_embedding)"
                       r"|norm|ln_|bn\d|embeddings\.")


@dataclass
class WarmRestart:
    """From optimizer step `step` on, the schedule starts again: `warmup_steps` of linear warm-up to `peak` x each
    group's lr, then cosine to the end (a second training phase, e.g. stage 1's data.low_res)."""
    step: int
    warmup_steps: int
    peak: float = 1.0


@dataclass
class ParamGroupRule:
    """Parameters whose name matches `pattern` (a regex, searched) get this lr / decay; lr 0 freezes."""
    pattern: str = ""
    lr: float | None = None
    weight_decay: float | None = None


def build_param_groups(model: torch.nn.Module, lr: float, weight_decay: float,
                       rules: list[ParamGroupRule]) -> list[dict]:
    """One optimizer group per (lr, decay) pair. The first rule whose regex matches a name wins;
    lr 0 freezes the parameter (requires_grad False) so DeepSpeed never allocates state for it."""
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        group_lr, group_decay = lr, weight_decay
        for regex, rule in compiled:
            if regex.search(name):
                group_lr = rule.lr if rule.lr is not None else lr
                group_decay = rule.weight_decay if rule.weight_decay is not None else weight_decay
                break
        if group_lr == 0:
            param.requires_grad_(False)
        if not param.requires_grad:
            continue
        if param.ndim < 2 or _NO_DECAY.search(name):
            group_decay = 0.0
        group = groups.setdefault((group_lr, group_decay), {"params": [], "names": [], "lr": group_lr,
                                                            "weight_decay": group_decay})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def cosine_with_warmup(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """Multiplier for LambdaLR: linear warm-up from ~0 to 1, then cosine down to `min_ratio`."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def schedule_with_restart(warmup_steps: int, total_steps: int, min_ratio: float = 0.0,
                          restart: WarmRestart | None = None):
    """Multiplier for LambdaLR: cosine_with_warmup over the whole run, or, with `restart`, over the steps before it
    and again (scaled by restart.peak) over the steps from it to the end."""
    if restart is None:
        return cosine_with_warmup(warmup_steps, total_steps, min_ratio)
    first = cosine_with_warmup(warmup_steps, restart.step, min_ratio)
    second = cosine_with_warmup(restart.warmup_steps, total_steps - restart.step, min_ratio)
    return lambda step: first(step) if step < restart.step else restart.peak * second(step - restart.step)
