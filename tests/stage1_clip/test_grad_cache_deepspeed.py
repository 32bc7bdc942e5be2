"""Under DeepSpeed (ZeRO-0 and ZeRO-2) the accumulated step applies exactly the full-batch gradient."""
import json

import pytest
import torch

from mmtool.engine import OptimSettings, TrainEngine
from stage1_clip.grad_cache import LOSS_INPUTS, cached_step
from stage1_clip.loss import build_loss
from tests.stage1_clip.test_train_e2e import LAUNCHER_VARIABLES
from tests.stage1_clip.test_grad_cache import TinyClip, batch, split

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("zero_stage", [0, 2])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_deepspeed_sees_the_full_batch_gradient(tmp_path, monkeypatch, zero_stage, kind):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # restored afterwards: the engine sets them in-process
    k, n = 4, 16
    inputs = [t.float() if t.is_floating_point() else t for t in batch(n, seed=3)]
    loss_fn = build_loss(kind)
    torch.manual_seed(0)
    reference = TinyClip()
    model = TinyClip()
    model.load_state_dict(reference.state_dict())

    outputs = reference(*inputs)
    loss_fn(*(outputs[name] for name in LOSS_INPUTS)).backward()
    expected_norm = torch.cat([p.grad.flatten() for p in reference.parameters() if p.grad is not None]).norm()

    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": zero_stage}}))
    engine = TrainEngine(model, ds_config, micro_batch_size=n // k, accum_steps=k, optim=OptimSettings(
        lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6, grad_clip=1e6, warmup_steps=1, total_steps=10))
    applied_norms = []
    torch_optimizer = engine.engine.optimizer
    while hasattr(torch_optimizer, "optimizer"):  # ZeRO wraps the torch AdamW (which holds flat fp32 copies)
        torch_optimizer = torch_optimizer.optimizer
    torch_optimizer.register_step_pre_hook(lambda opt, args, kwargs: applied_norms.append(torch.cat(
        [p.grad.flatten() for group in opt.param_groups for p in group["params"] if p.grad is not None]).norm()))

    cached_step(engine, loss_fn, split(inputs, k))
    # Exactly one optimizer step for the k micro-batches, with the full-batch gradient: DeepSpeed divides by
    # gradient_accumulation_steps unless told not to, which would show as a k-times smaller norm. Steps are read
    # from AdamW's own counters: once torch.compile has run in the process (another test), dynamo's wrapper of
    # Optimizer.step calls the step hooks a second time for the same step.
    assert [int(state["step"]) for state in torch_optimizer.state.values()] == [1] * len(torch_optimizer.state)
    assert applied_norms and all(norm.item() == applied_norms[0].item() for norm in applied_norms)
    assert applied_norms[0].item() == pytest.approx(expected_norm.item(), rel=1e-5)
