"""A small multi-class U-Net with CBAM blocks (Woo et al., 2018, arXiv:1807.06521).

A user's land-cover style model as it comes, with no attention outputs of its
own: ``forward`` returns only class probabilities ``(B, K, H, W)`` (softmax over
K) of raw 0-255 RGB ``(B, 3, H, W)`` float32, H and W multiples of 4. The
spatial and channel attention of its CBAM blocks is inside;
:mod:`models.export_any` takes it out as extra graph outputs (:data:`CAPTURES`).
"""

from __future__ import annotations

import torch
from torch import nn

# The CBAM spatial maps worth serving (full resolution, 1/2 and 1/4), then the
# channel weights ``(B, C, 1, 1)`` of the first and the deepest block.
CAPTURES = (
    "enc1.2.spatial",
    "enc2.2.spatial",
    "bottom.2.spatial",
    "enc1.2.channel",
    "bottom.2.channel",
)


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: a sigmoid map ``(B, 1, H, W)`` from channel mean and max."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        out: torch.Tensor = self.gate(self.conv(pooled))
        return out


class CBAM(nn.Module):
    """Channel then spatial attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 4)
        self.channel = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)


def block(cin: int, cout: int) -> nn.Sequential:
    """Convolution, ReLU, CBAM."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), CBAM(cout))


class CBAMUNet(nn.Module):
    """A two-level U-Net with CBAM blocks: ``(B, 3, H, W)`` 0-255 -> ``(B, K, H, W)`` softmax.

    Args:
        classes: K; 1 makes a binary segmenter (a sigmoid probability ``(B, 1, H, W)``).
        sharpness: logits are multiplied by it; an untrained net is then decided
            (one class well above the others) rather than near-uniform.
    """

    def __init__(self, classes: int = 4, sharpness: float = 1.0) -> None:
        super().__init__()
        self.sharpness = sharpness
        self.enc1, self.enc2, self.bottom = block(3, 8), block(8, 16), block(16, 16)
        self.up2, self.dec2 = nn.ConvTranspose2d(16, 16, 2, stride=2), block(32, 8)
        self.up1, self.dec1 = nn.ConvTranspose2d(8, 8, 2, stride=2), block(16, 8)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(image / 255.0)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        b = self.bottom(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        logits = self.head(d1) * self.sharpness
        # One class is a binary map: its probability, not a softmax over one value.
        if logits.shape[1] == 1:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)


def build(classes: int = 4, seed: int = 0, sharpness: float = 20.0) -> CBAMUNet:
    """A seeded, untrained CBAM U-Net in eval mode."""
    torch.manual_seed(seed)
    return CBAMUNet(classes, sharpness).eval()
