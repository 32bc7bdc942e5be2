"""Batches copied to the GPU a step ahead (mmtool/device_prefetch.py): every batch, in order, values intact."""
import pytest
import torch

from mmtool.device_prefetch import prefetch_to_device


def batches(count: int):
    """Loader-like batches; pinned, as the train loader pins them, where there is a GPU."""
    pinned = torch.cuda.is_available()
    for index in range(count):
        image = torch.randn(4, 3, 16, 16)  # [B, 3, H, W]
        yield {"image": image.pin_memory() if pinned else image, "caption": [f"caption {index}"] * 4, "index": index}


def test_on_the_cpu_batches_pass_through_untouched():
    source = list(batches(5))
    out = list(prefetch_to_device(iter(source), torch.device("cpu"), ("image",)))
    assert len(out) == len(source) and all(a is b for a, b in zip(out, source))


def test_without_keys_nothing_is_moved():
    source = list(batches(3))
    out = list(prefetch_to_device(iter(source), torch.device("cuda", 0), ()))
    assert all(a is b for a, b in zip(out, source))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the copy-ahead path needs a CUDA device")
def test_on_a_gpu_each_batch_arrives_one_ahead_with_its_values():
    device = torch.device("cuda", 0)
    source, pulled = list(batches(6)), []
    expected = [batch["image"].double().sum().item() for batch in source]
    for position, batch in enumerate(prefetch_to_device(batches_from(source, pulled), device, ("image",))):
        assert batch["index"] == position and batch["caption"] == source[position]["caption"]
        assert batch["image"].device == device
        assert len(pulled) == min(position + 2, len(source))  # the next batch is already on its way
        torch.cuda._sleep(10_000_000)  # a long kernel on the compute stream while the next copy runs
        assert batch["image"].double().sum().item() == pytest.approx(expected[position], rel=1e-12)


def batches_from(source: list, pulled: list):
    for batch in source:
        pulled.append(batch["index"])
        yield batch
