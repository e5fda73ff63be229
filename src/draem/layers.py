"""Network pieces shared by the methods."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class PooledEncoder(nn.Module):
    """Blocks `block1..blockN` of the given widths with 2x2 max-pools `mp1..` between them; every block's output."""

    def __init__(self, in_channels: int, widths: list[int], block: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.depth = len(widths)
        for index, (c_in, c_out) in enumerate(zip([in_channels, *widths[:-1]], widths, strict=True), start=1):
            if index > 1:
                self.add_module(f"mp{index - 1}", nn.MaxPool2d(2))
            self.add_module(f"block{index}", block(c_in, c_out))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index in range(1, self.depth + 1):
            if index > 1:
                x = getattr(self, f"mp{index - 1}")(x)
            x = getattr(self, f"block{index}")(x)
            features.append(x)
        return features
