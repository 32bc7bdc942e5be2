"""Batches copied to the GPU one step ahead, on a side stream, so the copy runs while the current step computes.

The engine synchronises once a step (the non-finite check, DeepSpeed's own bookkeeping), so a batch copied after
the step's end leaves the GPU idle for the copy: at ViT-B/16's 224 px a batch of 1024 float32 images is 617 MB.
Copied ahead from pinned memory, the copy engine moves it while the previous step's kernels run. On the CPU the
batches pass through unchanged.
"""
from typing import Iterable, Iterator

import torch


def prefetch_to_device(batches: Iterable[dict], device: torch.device, keys: tuple[str, ...]) -> Iterator[dict]:
    """Yields `batches` with the tensors under `keys` already on `device` (a CUDA device), one batch ahead."""
    if device.type != "cuda" or not keys:
        yield from batches
        return
    copy_stream = torch.cuda.Stream(device)
    compute_stream = torch.cuda.current_stream(device)
    pending = None
    for batch in batches:
        with torch.cuda.stream(copy_stream):
            moved = {**batch, **{key: batch[key].to(device, non_blocking=True) for key in keys if key in batch}}
        if pending is not None:
            yield pending
        compute_stream.wait_stream(copy_stream)  # the coming step reads `moved` only after its copy has landed
        for key in keys:
            if key in moved:
                moved[key].record_stream(compute_stream)  # not reused by the copy stream while the step reads it
        pending = moved
    if pending is not None:
        yield pending
