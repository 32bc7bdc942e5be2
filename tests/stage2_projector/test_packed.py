"""Padding-free batches: a micro-batch packed into one row gives each sample the loss it has alone or padded."""
import pytest
import torch
import torch.nn.functional as F

from mmtool.errors import MmtoolError
from stage2_projector.chat_format import IGNORE_INDEX, encode_conversation
from stage2_projector.checkpoint import build_vlm
from stage2_projector.config import AlignConfig, ModelConfig
from stage2_projector.data import encode_caption_batch
from stage2_projector.llm import add_image_token
from stage2_projector.packing import batch_tokens, check_packable, pack_batch, shared_prefix_length
from stage3_llm.conversations import collate_conversations
from tests.helpers.tiny_vlm import CORPUS, chatml_tokenizer, save_tiny_clip, tiny_llama

INSTRUCTIONS = ["Describe this image briefly.", "What is shown?"]


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """The reference: full logits [B, T, V], token t predicts label t+1, -100 does not count."""
    targets = labels[:, 1:]  # [B, T-1]
    tokens = (targets != IGNORE_INDEX).sum()
    loss_sum = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
    return {"loss_sum": loss_sum, "tokens": tokens, "loss": loss_sum / tokens.clamp(min=1)}


def random_samples(vocab: int, lengths: list[int], seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) pairs: a prompt half unsupervised, the answer half supervised."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for length in lengths:
        ids = torch.randint(5, vocab, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2:]
        samples.append((ids, labels))
    return samples


def per_sample_loss_sums(logits: torch.Tensor, labels: torch.Tensor, starts: list[int], ends: list[int]) -> list:
    """Summed next-token cross-entropy of each [start, end) span of one row: logits [T, V], labels [T]."""
    sums = []
    for start, end in zip(starts, ends):
        targets = labels[start + 1:end]  # [L-1]
        sums.append(F.cross_entropy(logits[start:end - 1], targets, ignore_index=IGNORE_INDEX, reduction="sum"))
    return torch.stack(sums)


def packed_loss_sums(logits: torch.Tensor, labels: torch.Tensor, lengths: list[int], prefix: int) -> torch.Tensor:
    """Summed loss of each sample of a packed row (logits [T, V], labels [T]) whose first `prefix` ids are shared:
    the sample's targets are the tokens of its own part."""
    token_loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="none")  # [T-1]
    by_target = torch.cat([torch.zeros(1), token_loss])  # [T]: the loss of predicting token t
    sums, start = [], prefix
    for length in lengths:
        sums.append(by_target[start:start + length - prefix].sum())
        start += length - prefix
    return torch.stack(sums)


def padded_batch(samples, pad_id: int = 0) -> dict:
    length = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), length), pad_id)  # [B, T]
    labels = torch.full((len(samples), length), IGNORE_INDEX)  # [B, T]
    mask = torch.zeros((len(samples), length), dtype=torch.long)  # [B, T]
    for row, (ids, sample_labels) in enumerate(samples):
        input_ids[row, :len(ids)], labels[row, :len(ids)], mask[row, :len(ids)] = (
            torch.tensor(ids), torch.tensor(sample_labels), 1)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def test_pack_batch_layout():
    x = IGNORE_INDEX
    packed = pack_batch([([7, 8, 9], [x, 8, 9]), ([4, 5], [x, 5])], image_token_id=99)
    assert packed["input_ids"].tolist() == [[7, 8, 9, 4, 5]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["labels"].tolist() == [[x, 8, 9, x, 5]]
    assert batch_tokens(packed) == 5
    assert packed["attention_mask"][0, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                                             [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]


def test_packing_needs_sdpa_attention():
    model = tiny_llama(60)
    check_packable(model)
    model.config._attn_implementation = "eager"
    with pytest.raises(MmtoolError, match="data.packed"):
        check_packable(model)


def test_a_shared_prefix_is_held_once_and_stops_at_images_and_answers():
    x = IGNORE_INDEX
    samples = [([1, 2, 3, 99, 99, 6, 7], [x, x, x, x, x, x, 7]), ([1, 2, 3, 99, 99, 8], [x, x, x, x, x, 8])]
    packed = pack_batch(samples, image_token_id=99)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 99, 99, 6, 7, 99, 99, 8]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 3, 4, 5]]
    assert packed["labels"].tolist() == [[x, x, x, x, x, x, 7, x, x, 8]]
    mask = packed["attention_mask"][0, 0].int()
    assert mask[7].tolist() == [1, 1, 1, 0, 0, 0, 0, 1, 0, 0]  # the second sample sees the prefix and itself
    assert shared_prefix_length([([1, 2, 3, 4], [x, x, 3, 4]), ([1, 2, 3, 5], [x, x, x, 5])], 99) == 1
    assert shared_prefix_length([([1, 2], [x, 2]), ([1, 2], [x, 2])], 99) == 0


def test_packed_llama_loss_equals_each_sample_alone_and_padded():
    torch.manual_seed(0)
    model = tiny_llama(60).eval()
    lengths = [9, 23, 6, 16]
    common = [11, 12, 13]  # a shared template-like start: held once in the packed row
    samples = [(common + ids, [IGNORE_INDEX] * 3 + labels) for ids, labels in random_samples(60, lengths)]
    lengths = [n + 3 for n in lengths]
    with torch.no_grad():
        alone = torch.cat([per_sample_loss_sums(model(input_ids=torch.tensor([ids])).logits[0],
                                                torch.tensor(labels), [0], [len(ids)]) for ids, labels in samples])
        padded = padded_batch(samples)
        padded_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        by_row = torch.cat([per_sample_loss_sums(padded_logits[row], padded["labels"][row], [0], [length])
                            for row, length in enumerate(lengths)])
        packed = pack_batch(samples, image_token_id=-1)
        packed_logits = model(input_ids=packed["input_ids"], attention_mask=packed["attention_mask"],
                              position_ids=packed["position_ids"], use_cache=False).logits
        by_segment = packed_loss_sums(packed_logits[0], packed["labels"][0], lengths, 3)
        whole_padded = answer_loss(padded_logits, padded["labels"])
        whole_packed = answer_loss(packed_logits, packed["labels"])
        plain = model(input_ids=packed["input_ids"], use_cache=False).logits  # one causal sequence
    assert packed["input_ids"].shape[1] == sum(lengths) - 3 * (len(lengths) - 1)
    torch.testing.assert_close(by_segment, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_segment, by_row, atol=1e-5, rtol=1e-5)
    assert whole_packed["tokens"] == whole_padded["tokens"]
    torch.testing.assert_close(whole_packed["loss"], whole_padded["loss"], atol=1e-6, rtol=1e-5)
    # Without the mask and positions the samples would see each other: the checks above can fail.
    assert not torch.allclose(answer_loss(plain, packed["labels"])["loss"], whole_padded["loss"], atol=1e-4)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    clip_path = save_tiny_clip(tmp_path_factory.mktemp("packed") / "clip.pt")
    llm = add_image_token(tiny_llama(len(chatml_tokenizer(CORPUS)) + 1), chatml_tokenizer(CORPUS), "tiny")
    return build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path))), clip_path, llm=llm)


def test_packed_captions_give_the_padded_loss_with_images_in_order(tiny_vlm):
    model, tokenizer, n = tiny_vlm.model.eval(), tiny_vlm.tokenizer, tiny_vlm.num_image_tokens
    captions, keys = ["a red apple", "cat face with tears of joy", "green heart"], ["k1", "k2", "k3"]
    images = torch.randn(3, 3, 32, 32)  # [B, 3, H, W]
    padded = encode_caption_batch(tokenizer, captions, keys, INSTRUCTIONS, n, 64)
    packed = encode_caption_batch(tokenizer, captions, keys, INSTRUCTIONS, n, 64, packed=True)
    with torch.no_grad():
        reference = model(padded["input_ids"], padded["attention_mask"], images, padded["labels"])
        ours = model(packed["input_ids"], packed["attention_mask"], images, packed["labels"], packed["position_ids"])
        swapped = model(packed["input_ids"], packed["attention_mask"], images.flip(0), packed["labels"],
                        packed["position_ids"])
        # without labels: every position's logits, for the per-sample reference
        reference_logits = model(padded["input_ids"], padded["attention_mask"], images)["logits"]  # [B, T, V]
        ours_logits = model(packed["input_ids"], packed["attention_mask"], images, None,
                            packed["position_ids"])["logits"]  # [1, T', V]
    assert ours["tokens"] == reference["tokens"]
    torch.testing.assert_close(ours["loss"], reference["loss"], atol=1e-5, rtol=1e-5)
    # the model sends only the predicting positions through the output layer: the same loss as all of them
    full = answer_loss(reference_logits, padded["labels"])
    assert full["tokens"] == reference["tokens"] and reference["logits"].shape[0] == int(full["tokens"])
    torch.testing.assert_close(reference["loss_sum"], full["loss_sum"], atol=1e-5, rtol=1e-6)
    lengths = padded["attention_mask"].sum(1).tolist()
    prefix = shared_prefix_length([(row[:n].tolist(), labels[:n].tolist()) for row, labels, n in
                                   zip(padded["input_ids"], padded["labels"], lengths)], tiny_vlm.llm.image_token_id)
    assert prefix > 0 and batch_tokens(packed) == sum(lengths) - prefix * 2
    by_segment = packed_loss_sums(ours_logits[0], packed["labels"][0], lengths, prefix)
    by_row = torch.cat([per_sample_loss_sums(reference_logits[row], padded["labels"][row], [0], [length])
                        for row, length in enumerate(lengths)])
    torch.testing.assert_close(by_segment, by_row, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(swapped["loss"], reference["loss"], atol=1e-4)  # the images' order matters


def test_packed_conversations_collate_like_padded_ones(tiny_vlm):
    model, tokenizer, n = tiny_vlm.model.eval(), tiny_vlm.tokenizer, tiny_vlm.num_image_tokens
    image_id = tiny_vlm.llm.image_token_id
    items = []
    for index, (ids, labels) in enumerate(random_samples(len(tokenizer) - 1, [12, 7, 15])):
        with_image = index != 1  # the middle conversation has no image: images stay in sample order
        prefix = [image_id] * n if with_image else []
        items.append({"input_ids": prefix + ids, "labels": [IGNORE_INDEX] * len(prefix) + labels,
                      "pixel_values": torch.randn(3, 32, 32) if with_image else None})
    padded = collate_conversations(items, tokenizer.pad_token_id)
    packed = collate_conversations(items, tokenizer.pad_token_id, packed=True, image_token_id=image_id)
    assert packed["pixel_values"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(packed["pixel_values"], padded["pixel_values"])
    with torch.no_grad():
        reference = model(padded["input_ids"], padded["attention_mask"], padded["pixel_values"], padded["labels"])
        ours = model(packed["input_ids"], packed["attention_mask"], packed["pixel_values"], packed["labels"],
                     packed["position_ids"])
    assert ours["tokens"] == reference["tokens"]
    torch.testing.assert_close(ours["loss"], reference["loss"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_packed_smollm2_loss_equals_padded_per_sample(smollm2):
    """SmolLM2's own template: its system prompt is the shared prefix."""
    model, tokenizer = smollm2.model.eval(), smollm2.tokenizer
    questions = [("What is this?", "A red apple."), ("Which emoji group does this belong to?", "Animals & Nature"),
                 ("Is this a cat face?", "No.")]
    samples = [encode_conversation(tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                   "<image>", 9) for q, a in questions]
    lengths = [len(ids) for ids, _ in samples]
    prefix = shared_prefix_length(samples, smollm2.image_token_id)
    with torch.no_grad():
        padded = padded_batch(samples, tokenizer.pad_token_id)
        padded_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        packed = pack_batch(samples, smollm2.image_token_id)
        packed_logits = model(input_ids=packed["input_ids"], attention_mask=packed["attention_mask"],
                              position_ids=packed["position_ids"], use_cache=False).logits
    by_segment = packed_loss_sums(packed_logits[0], packed["labels"][0], lengths, prefix)
    by_row = torch.cat([per_sample_loss_sums(padded_logits[row], padded["labels"][row], [0], [length])
                        for row, length in enumerate(lengths)])
    assert prefix >= 20  # the system prompt and the user header
    torch.testing.assert_close(by_segment, by_row, atol=1e-3, rtol=1e-4)
