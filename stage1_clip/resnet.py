"""CLIP's modified ResNet image tower.

Differences from torchvision's ResNet: a 3-conv stem with an average pool instead of a max pool; anti-aliased
strided convolutions (an average pool before each stride-1 conv that replaces a strided one); and attention
pooling (the mean token queries all positions) in place of global average pooling.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()  # anti-aliased downsampling
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        nn.init.zeros_(self.bn3.weight)  # each block starts as the identity
        self.downsample = nn.Identity()
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride),
                nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # [B, P, H, W]
        out = F.relu(self.bn2(self.conv2(out)))  # [B, P, H, W]
        out = self.bn3(self.conv3(self.avgpool(out)))  # [B, 4P, H/s, W/s]
        return F.relu(out + self.downsample(x))  # [B, 4P, H/s, W/s]


class AttentionPool2d(nn.Module):
    """One query, the mean of the feature map, attends over [mean, every position]; then its own projection."""

    def __init__(self, spatial_dim: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        assert embed_dim % heads == 0, f"embed_dim {embed_dim} is not a multiple of heads {heads}"
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(spatial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.q_proj = nn.Linear(embed_dim, embed_dim)  # only the mean token queries
        self.kv_proj = nn.Linear(embed_dim, 2 * embed_dim)  # fused k and v
        self.c_proj = nn.Linear(embed_dim, output_dim)
        std = embed_dim ** -0.5
        for linear in (self.q_proj, self.kv_proj, self.c_proj):
            nn.init.normal_(linear.weight, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding  # [B, 1+HW, C]
        q = self.q_proj(x[:, :1]).view(B, 1, self.heads, C // self.heads).transpose(1, 2)  # [B, h, 1, hd]
        kv = self.kv_proj(x).view(B, 1 + H * W, 2, self.heads, C // self.heads)  # [B, 1+HW, 2, h, hd]
        k, v = kv.permute(2, 0, 3, 1, 4)  # 2 x [B, h, 1+HW, hd]
        y = F.scaled_dot_product_attention(q, k, v)  # [B, h, 1, hd]
        return self.c_proj(y.reshape(B, C))  # [B, output_dim]


class ModifiedResNet(nn.Module):
    def __init__(self, layers: tuple[int, int, int, int], width: int = 64, heads: int = 32,
                 image_size: int = 224, output_dim: int = 1024):
        super().__init__()
        assert image_size % 32 == 0, f"image_size {image_size} is not a multiple of 32 (the total stride)"
        self.output_width = output_dim
        self.stem = nn.Sequential(  # stride 4 in all: conv /2, avgpool /2
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AvgPool2d(2),
        )
        stages, inplanes = [], width
        for i, blocks in enumerate(layers):  # planes double and the stride is 2 from the second stage on
            planes = width * 2 ** i
            stage = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.attnpool = AttentionPool2d(image_size // 32, inplanes, heads, output_dim)  # inplanes = 32 * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.stem[0].weight.dtype)  # under pure-bf16 training the weights are bf16
        x = x.contiguous(memory_format=torch.channels_last)  # NHWC: faster oneDNN / cuDNN convolutions
        x = self.stem(x)  # [B, width, H/4, W/4]
        x = self.stages(x)  # [B, 32*width, H/32, W/32]
        return self.attnpool(x)  # [B, output_dim]
