"""The answer-token loss of a VLM on val batches: the val figure of stages 2 (captions) and 3 (conversations)."""
from typing import Iterable

import torch


def model_inputs(batch: dict, device: torch.device, image_dtype: torch.dtype) -> tuple:
    """The VLM's forward arguments from a batch {"input_ids", "attention_mask", "pixel_values" (or None),
    "labels", "position_ids" (packed batches only)}, on `device`; images in the dtype of the weights."""
    pixels, mask, positions = batch["pixel_values"], batch["attention_mask"], batch.get("position_ids")
    return (batch["input_ids"].to(device), None if mask is None else mask.to(device),
            None if pixels is None else pixels.to(device, image_dtype), batch["labels"].to(device),
            None if positions is None else positions.to(device))


@torch.no_grad()
def evaluate_answer_loss(forward, batches: Iterable[tuple]) -> dict:
    """Mean next-token loss over the answer tokens of `batches` (forward arguments, see model_inputs); `forward`
    is the engine or the model. Under DeepSpeed every rank runs every batch (ZeRO-3 gathers weights
    collectively), so all ranks get the same figure."""
    loss_sum, tokens = 0.0, 0
    for inputs in batches:
        outputs = forward(*inputs)
        loss_sum += outputs["loss_sum"].item()
        tokens += int(outputs["tokens"])
    return {"answer_loss": loss_sum / max(tokens, 1), "answer_tokens": tokens}
