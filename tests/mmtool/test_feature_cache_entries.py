"""The feature cache's entry files: every dtype and shape read back bit for bit, and an entry that is not whole
(torn, truncated, garbage) is a miss that the tower recomputes and rewrites, never a crash or a wrong tensor."""
import pytest
import torch

from mmtool.feature_cache import HEADER_BYTES, SUFFIX, FeatureCache, decode_entry, encode_entry


@pytest.mark.parametrize("tensor", [
    torch.randn(192, 3, 3).to(torch.bfloat16), torch.randn(1280), torch.randn(2, 5).double(),
    torch.randint(0, 50_000, (2, 32)), torch.tensor([True, False]), torch.tensor(3.5), torch.zeros(0, 4)])
def test_an_entry_reads_back_bit_for_bit(tensor):
    data = encode_entry(tensor)
    assert len(data) == HEADER_BYTES + tensor.numel() * tensor.element_size()
    back = decode_entry(data)
    assert back.dtype == tensor.dtype and back.shape == tensor.shape
    assert torch.equal(back.view(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8))


def test_a_row_of_a_batch_stores_only_its_own_values():
    batch = torch.arange(12.0).reshape(3, 4)
    assert len(encode_entry(batch[1])) == HEADER_BYTES + 4 * 4
    assert torch.equal(decode_entry(encode_entry(batch[1])), torch.tensor([4.0, 5.0, 6.0, 7.0]))


@pytest.mark.parametrize("damage", [lambda d: d[:-1], lambda d: d + b"\0", lambda d: b"", lambda d: d[:10],
                                    lambda d: b"float99 2,2".ljust(HEADER_BYTES) + d[HEADER_BYTES:],
                                    lambda d: b"\xff" * len(d), lambda d: b"Size 4".ljust(HEADER_BYTES) + d[64:]])
def test_a_damaged_entry_is_a_miss_then_rewritten(tmp_path, damage):
    cache = FeatureCache(tmp_path, {"tower": "doubling"})
    calls = []

    def tower(x):  # [B, 4] -> [B, 4]
        calls.append(len(x))
        return 2 * x

    inputs = torch.arange(8.0).reshape(2, 4)
    cache.features(inputs, tower)
    (first, *_), = [sorted(cache.folder.rglob(f"*{SUFFIX}"))]
    first.write_bytes(damage(first.read_bytes()))
    again = cache.features(inputs, tower)
    assert calls == [2, 1]  # only the damaged row ran the tower again
    assert torch.equal(again, 2 * inputs)
    assert torch.equal(cache.features(inputs, tower), 2 * inputs) and calls == [2, 1]  # rewritten whole
