"""The answer loss per token or per conversation, against each sample's loss computed alone, on padded and packed
batches of a tiny Llama."""
import pytest
import torch
import torch.nn.functional as F

from mmtool.errors import MmtoolError
from stage2_projector.answer_loss import answer_loss, sample_ids
from stage2_projector.chat_format import IGNORE_INDEX
from stage2_projector.packing import pack_batch
from tests.helpers.tiny_vlm import tiny_llama
from tests.stage2_projector.test_packed import padded_batch, random_samples


def kept_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V] -> [K] the loss of each supervised token, row-major, as the model keeps them."""
    predicts = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    return F.cross_entropy(logits[:, :-1][predicts].double(), labels[:, 1:][predicts], reduction="none")  # [K]


@pytest.fixture(scope="module")
def batches():
    torch.manual_seed(0)
    model = tiny_llama(60).eval()
    common = [11, 12, 13]  # a shared template-like start: held once in the packed row
    samples = [(common + ids, [IGNORE_INDEX] * 3 + labels)
               for ids, labels in random_samples(60, [9, 23, 6, 16, 4])]
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([ids])).logits for ids, _ in samples]
        padded = padded_batch(samples)
        padded_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        packed = pack_batch(samples, image_token_id=-1)
        packed_logits = model(input_ids=packed["input_ids"], attention_mask=packed["attention_mask"],
                              position_ids=packed["position_ids"], use_cache=False).logits
    per_sample = [kept_token_losses(logits, torch.tensor([labels])) for logits, (_, labels) in zip(alone, samples)]
    return per_sample, (padded_logits, padded["labels"], None), (packed_logits, packed["labels"],
                                                                 packed["position_ids"])


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_per_conversation_is_the_mean_of_each_samples_own_mean(batches, layout):
    per_sample, padded, packed = batches
    logits, labels, positions = padded if layout == "padded" else packed
    token_losses = kept_token_losses(logits, labels)
    expected = torch.stack([losses.mean() for losses in per_sample]).mean()
    torch.testing.assert_close(answer_loss(token_losses, labels, positions, "conversation"), expected,
                               atol=1e-6, rtol=1e-6)
    by_token = torch.cat(per_sample).mean()  # long answers weigh more: not the same figure
    torch.testing.assert_close(answer_loss(token_losses, labels, positions, "token"), by_token, atol=1e-6, rtol=1e-6)
    assert abs(float(expected - by_token)) > 1e-3


def test_samples_of_a_packed_row_start_where_positions_fall_back():
    x = IGNORE_INDEX
    packed = pack_batch([([1, 2, 3, 9], [x, x, x, 9]), ([1, 2, 4, 5], [x, x, 4, 5]), ([1, 2, 6], [x, x, 6])], 99)
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 1, 2, 3, 1, 2]]  # one shared token
    assert sample_ids(packed["labels"], packed["position_ids"]).tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2]]
    assert sample_ids(torch.full((2, 3), x), None).tolist() == [[0, 0, 0], [1, 1, 1]]  # padded: a row each


def test_an_unknown_weighting_is_refused():
    labels = torch.tensor([[IGNORE_INDEX, 5]])
    with pytest.raises(MmtoolError, match="train.answer_weighting: unknown 'sample'"):
        answer_loss(torch.ones(1), labels, None, "sample")
