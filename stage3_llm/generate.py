"""Answering a question about an image: the prompt in the LLM's chat template, then greedy (or sampled)
decoding with the KV cache of transformers' generate, text streamed as it is produced; or greedy answers to a
batch of questions at once (eval-llava), the same tokens as one at a time."""
from typing import Callable

import torch
from transformers import TextStreamer

from stage2_projector.chat_format import encode_prompt
from stage2_projector.llm import IMAGE_TOKEN
from stage2_projector.tower_tags import tagged


class CallbackStreamer(TextStreamer):
    """transformers' word-boundary-safe text streaming, handing each finished piece to `on_text`."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


def prompt_ids(tokenizer, question: str, num_image_tokens: int, tag_line: str | None = None) -> list[int]:
    """One user turn holding the image (first, as in training unless the question places `<image>` itself), and
    after it the image's tower tags when the model has them."""
    content = question if IMAGE_TOKEN in question else f"{IMAGE_TOKEN}\n{question}"
    if tag_line is not None:
        content = tagged(content, tag_line)
    return encode_prompt(tokenizer, [{"role": "user", "content": content}], IMAGE_TOKEN, num_image_tokens)


def tag_lines(model, images: torch.Tensor, features: torch.Tensor | None = None) -> list[str | None]:
    """Pixels [B, 3, S, S] (with their tower features [B, N, C] when computed already) -> the images' tower-tag
    lines, or None for each when the model has no tags. Tags in style views are read from the pixels."""
    if model.tower_tags is None:
        return [None] * len(images)
    return model.tag_lines(images if features is None or model.tower_tags.style_views else features)


def tower_features(model, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> the tower's features [B, N, C], computed once for both the tag line and the image tokens."""
    return model.image_features(images.to(next(model.vision.parameters()).dtype))


@torch.no_grad()
def generate(model, tokenizer, image: torch.Tensor, question: str, num_image_tokens: int, max_new_tokens: int = 64,
             temperature: float = 0.0, on_text: Callable[[str], None] | None = None) -> list[int]:
    """The answer's token ids (end-of-turn token included when reached); `image` is [3, S, S] preprocessed.
    temperature 0 = greedy decoding."""
    model.eval()
    features = tower_features(model, image[None])  # [1, N, C]
    line = tag_lines(model, image[None], features)[0]
    input_ids = torch.tensor([prompt_ids(tokenizer, question, num_image_tokens, line)])  # [1, T]
    embeds = model.embed(input_ids, features)  # [1, T, D]
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    output = model.llm.generate(
        inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        streamer=CallbackStreamer(tokenizer, on_text) if on_text else None, **sampling)
    return output[0].tolist()  # from inputs_embeds alone, generate returns only the new tokens


@torch.no_grad()
def generate_batch(model, tokenizer, images: torch.Tensor, questions: list[str], num_image_tokens: int,
                   max_new_tokens: int = 64) -> list[list[int]]:
    """Greedy answers to a batch of (image, question) pairs, the same token ids as `generate` one at a time.

    Prompts are left-padded (so every row's next token comes from its last column) and the attention mask keeps
    the padding out; transformers derives the positions from that mask and stops once every row has produced the
    end-of-turn token or max_new_tokens. `images` is [B, 3, S, S] preprocessed; each answer ends at its first
    end-of-turn token (included, as `generate` returns it).
    """
    model.eval()
    features = tower_features(model, images)  # [B, N, C]
    prompts = [prompt_ids(tokenizer, question, num_image_tokens, line)
               for question, line in zip(questions, tag_lines(model, images, features))]
    length = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), length), tokenizer.pad_token_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)  # [B, T]
    for row, ids in enumerate(prompts):
        input_ids[row, length - len(ids):] = torch.tensor(ids)
        attention_mask[row, length - len(ids):] = 1
    # Padding is never the image token, so the features fill each row's placeholders in row order.
    embeds = model.embed(input_ids, features)  # [B, T, D]
    output = model.llm.generate(
        inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=False, temperature=None, top_p=None, top_k=None)  # [B, new tokens]
    return [until_end_of_turn(row.tolist(), tokenizer.eos_token_id) for row in output]


def until_end_of_turn(ids: list[int], eos_token_id: int) -> list[int]:
    """A batch row cut after its first end-of-turn token (what follows is padding)."""
    return ids[:ids.index(eos_token_id) + 1] if eos_token_id in ids else ids
