"""RIAD's inpainting U-Net: five 4x4 stride-2 convolutions down, five transposed ones up, skips by concatenation."""

from __future__ import annotations

import torch
from torch import nn

DEPTH = 5


def _down(c_in: int, c_out: int, batch_norm: bool = True) -> nn.Sequential:
    """Halve the resolution: 4x4 stride-2 convolution, BatchNorm (unless the first), LeakyReLU 0.2."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Double the resolution: 4x4 stride-2 transposed convolution, BatchNorm, ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def init_weights(module: nn.Module) -> None:
    """Convolution weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0 (the pix2pix U-Net's)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class InpaintingUNet(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, 3, H, W) in [-1, 1]; H and W must be multiples of 32."""

    def __init__(self, width: int = 64, channels: int = 3) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.down = nn.ModuleList(_down(c_in, c_out, batch_norm=index > 0) for index, (c_in, c_out)
                                  in enumerate(zip([channels, *widths[:-1]], widths, strict=True)))
        # up[i] maps the (concatenated) features at depth DEPTH - i to the width of depth DEPTH - i - 1.
        self.up = nn.ModuleList(
            _up(widths[-1] if index == 0 else 2 * widths[-1 - index], widths[-2 - index])
            for index in range(DEPTH - 1))
        self.out = nn.Sequential(nn.ConvTranspose2d(2 * widths[0], channels, 4, stride=2, padding=1), nn.Tanh())
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        x = skips.pop()
        for layer in self.up:
            x = torch.cat((layer(x), skips.pop()), dim=1)
        return self.out(x)
