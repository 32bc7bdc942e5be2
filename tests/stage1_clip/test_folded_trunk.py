"""EfficientNet-Lite0's folded inference copy (EfficientNetLite0Tower.folded_copy), which computes the frozen
trunk's cache misses: the tower's own outputs, in float64 to rounding, at any cut and input size; the tower itself
untouched; the cache runs the copy in the tower's current dtype."""
import pytest
import torch

from stage1_clip.efficientnet import EfficientNetLite0Tower
from stage1_clip.feature_cache import ImageTrunkCache


def random_statistics_tower(dtype=torch.float64) -> EfficientNetLite0Tower:
    torch.manual_seed(0)
    tower = EfficientNetLite0Tower(pretrained=False).to(dtype)
    with torch.no_grad():  # BatchNorm far from the identity, so a fold that dropped a term would show
        for module in tower.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return tower.eval()


@pytest.mark.parametrize("size", [37, 64])  # odd: the stride-2 convolutions pad unevenly
@pytest.mark.parametrize("cut", [1, 2, 9, 16, 18])
def test_folded_prefix_equals_the_towers_in_float64(size, cut):
    tower = random_statistics_tower()
    images = torch.randn(2, 3, size, size, dtype=torch.float64)  # [B, 3, H, W]
    folded = tower.folded_copy(cut)
    with torch.no_grad():
        expected = tower.prefix(images, cut)
        got = folded.prefix(images, cut)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_the_fold_leaves_the_tower_alone_and_removes_the_copys_batchnorm():
    tower = random_statistics_tower()
    before = {name: tensor.clone() for name, tensor in tower.state_dict().items()}
    folded = tower.folded_copy(16)  # stem + blocks 0..14
    assert all(torch.equal(tensor, before[name]) for name, tensor in tower.state_dict().items())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules()) == 49
    left = [name for name, m in folded.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert left == ["net._blocks.15._bn0", "net._blocks.15._bn1", "net._blocks.15._bn2", "net._bn1"]
    assert not any(p.requires_grad for p in folded.parameters())


class DictCache:
    """A FeatureCache stand-in that computes every row (the trunk is what is under test)."""

    def features(self, inputs, tower, keys=None, fill=None):
        return tower(inputs)


def test_the_cache_runs_the_copy_in_the_towers_current_dtype():
    tower = random_statistics_tower(torch.float32)
    cache = ImageTrunkCache(DictCache(), cut=16, trunk=tower.folded_copy(16))
    images = torch.randn(3, 3, 48, 48)  # [B, 3, H, W]
    fp32 = cache.features(tower, images)  # [B, 1280]
    with torch.no_grad():
        torch.testing.assert_close(fp32, tower(images), rtol=1e-4, atol=1e-5)
    tower.to(torch.bfloat16)  # as the engine casts the model after the cache opened
    bf16 = cache.features(tower, images)
    assert bf16.dtype == torch.bfloat16 and next(cache.trunk.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, rtol=0.1, atol=0.1)
