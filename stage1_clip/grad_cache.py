"""Exact large-batch contrastive steps by gradient caching: k micro-batches, one loss over all of them.

Plain gradient accumulation would contrast each micro-batch only with itself. Here every sample of the
effective batch (micro_batch x k x ranks) is contrasted with every other:
  1. forward all micro-batches without autograd, keeping only their features;
  2. compute the loss on all features at once and its gradient with respect to the features, the logit
     scale and the logit bias (the gradient cache);
  3. re-run each micro-batch with autograd (the same random state as in 1, so dropout matches) and
     back-propagate the cached feature gradients through it.
The logit scale and bias are outputs of the model too; their cached gradient is applied once, on the first
micro-batch, not on every one (the well-known implementation gets it k times too large).
"""
import torch

from stage1_clip.loss import upcast

# Model outputs that feed the loss, in the order the loss takes them.
LOSS_INPUTS = ("image_features", "text_features", "logit_scale", "logit_bias")


def _rng_states() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_states(states: tuple) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state_all(states[1])


def cached_step(engine, loss_fn, micro_batches: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `micro_batches` (each the model's forward arguments); returns the loss and
    the logit scale it used.

    `engine` is a TrainEngine whose DeepSpeed gradient_accumulation_steps equals len(micro_batches)."""
    # 1. features of every micro-batch, no graph kept
    rng_before, cached = [], []
    with torch.no_grad():
        for inputs in micro_batches:
            rng_before.append(_rng_states())
            cached.append(engine(*inputs))
    rng_after = _rng_states()

    # 2. the loss of the whole effective batch and its gradient w.r.t. the features / scale / bias
    leaves = {
        "image_features": upcast(torch.cat([c["image_features"] for c in cached])).requires_grad_(),  # [k*b, D]
        "text_features": upcast(torch.cat([c["text_features"] for c in cached])).requires_grad_(),  # [k*b, D]
        "logit_scale": upcast(cached[0]["logit_scale"].detach()).requires_grad_(),  # (1,)
        "logit_bias": (None if cached[0]["logit_bias"] is None
                       else upcast(cached[0]["logit_bias"].detach()).requires_grad_()),  # (1,)
    }
    loss = loss_fn(*(leaves[name] for name in LOSS_INPUTS))
    present = [name for name in LOSS_INPUTS if leaves[name] is not None]
    grads = dict(zip(present, torch.autograd.grad(loss, [leaves[name] for name in present])))
    sizes = [c["image_features"].shape[0] for c in cached]
    image_grads = grads["image_features"].split(sizes)  # k x [b, D]
    text_grads = grads["text_features"].split(sizes)  # k x [b, D]

    # 3. replay each micro-batch with autograd and push the cached gradients through it
    for index, inputs in enumerate(micro_batches):
        _set_rng_states(rng_before[index])
        outputs = engine(*inputs)
        surrogate = ((upcast(outputs["image_features"]) * image_grads[index]).sum()
                     + (upcast(outputs["text_features"]) * text_grads[index]).sum())
        if index == 0:  # scale and bias are shared by all micro-batches: their gradient counts once
            surrogate = surrogate + (upcast(outputs["logit_scale"]) * grads["logit_scale"]).sum()
            if "logit_bias" in grads:
                surrogate = surrogate + (upcast(outputs["logit_bias"]) * grads["logit_bias"]).sum()
        # The surrogate's gradient is already the full-batch gradient's share: no 1/k scaling.
        engine.backward(surrogate, scale_wrt_gas=False)
        engine.step()
    _set_rng_states(rng_after)
    return loss.detach(), leaves["logit_scale"].detach()
