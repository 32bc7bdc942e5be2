"""Speed switches change speed only: train.optimizer_kernel (AdamW kernels) and train.compile (compiled towers)."""
import pytest
import torch

from mmtool.engine import ADAMW_KERNELS, OptimSettings, TrainEngine
from mmtool.errors import MmtoolError
from stage1_clip.config import LossConfig, ModelConfig, TextConfig, VisionConfig
from stage1_clip.model import CLIP

TINY = ModelConfig(embed_dim=16, vision=VisionConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2),
                   text=TextConfig(context_length=8, width=16, layers=1, heads=2))


def adamw_steps(kernel: str, steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 7, dtype=torch.float64)), torch.nn.Parameter(torch.randn(3))]
    optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2,
                                  **ADAMW_KERNELS[kernel])
    for step in range(steps):
        loss = sum((p * (step + 1)).sin().sum() for p in params)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_adamw_kernels_compute_the_same_update_as_the_loop(kernel):
    for got, want in zip(adamw_steps(kernel), adamw_steps("loop")):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_unknown_optimizer_kernel_is_a_clear_error():
    settings = OptimSettings(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6, grad_clip=1.0, warmup_steps=1,
                             total_steps=10, kernel="turbo")
    with pytest.raises(MmtoolError, match="train.optimizer_kernel: unknown 'turbo'"):
        TrainEngine(CLIP(TINY, LossConfig(), 20), "configs/deepspeed/fp32.json", 2, optim=settings)


@pytest.mark.slow
def test_compiled_towers_keep_parameter_names_outputs_and_gradients():
    torch.manual_seed(0)
    eager = CLIP(TINY, LossConfig(), 20)
    compiled = CLIP(TINY, LossConfig(), 20)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_towers(backend="aot_eager")  # dynamo + AOT autograd without code generation: fast
    assert list(compiled.state_dict()) == list(eager.state_dict())
    images, tokens = torch.randn(3, 3, 16, 16), torch.randint(4, 20, (3, 8))
    for model in (eager, compiled):
        out = model(images, tokens, torch.ones_like(tokens))
        (out["image_features"] @ out["text_features"].T).sum().backward()
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, msg=name)
