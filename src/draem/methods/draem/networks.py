"""DRAEM's two sub-networks, with the authors' layer layout and state-dict key names."""

from __future__ import annotations

import torch
from torch import nn

from draem.layers import PooledEncoder


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _block(c_in: int, c_out: int, c_mid: int | None = None) -> nn.Sequential:
    """conv-BN-ReLU twice: c_in -> c_mid -> c_out (c_mid defaults to c_out)."""
    c_mid = c_out if c_mid is None else c_mid
    return nn.Sequential(*_conv_bn_relu(c_in, c_mid), *_conv_bn_relu(c_mid, c_out))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Bilinear x2 upsampling (align_corners=True), then conv-BN-ReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                         *_conv_bn_relu(c_in, c_out))


def init_weights(module: nn.Module) -> None:
    """The paper's initialisation: conv weights N(0, 0.02), BN weights N(1, 0.02), BN bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Encoder(PooledEncoder):
    """DRAEM's encoder: conv-BN-ReLU pairs of the given widths with max-pools between them; every output."""

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__(in_channels, widths, _block)


class ReconstructiveDecoder(nn.Module):
    """Four upsampling stages back to full resolution, no skip connections."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        w = width
        self.up1 = _up(8 * w, 8 * w)
        self.db1 = _block(8 * w, 4 * w, c_mid=8 * w)
        self.up2 = _up(4 * w, 4 * w)
        self.db2 = _block(4 * w, 2 * w, c_mid=4 * w)
        self.up3 = _up(2 * w, 2 * w)
        self.db3 = _block(2 * w, w, c_mid=2 * w)
        self.up4 = _up(w, w)
        self.db4 = _block(w, w)
        self.fin_out = nn.Sequential(nn.Conv2d(w, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.db1(self.up1(x))
        x = self.db2(self.up2(x))
        x = self.db3(self.up3(x))
        x = self.db4(self.up4(x))
        return self.fin_out(x)


class ReconstructiveSubNetwork(nn.Module):
    """Encoder-decoder that paints simulated anomalies away: (B, 3, H, W) -> (B, 3, H, W)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_width: int = 128) -> None:
        super().__init__()
        w = base_width
        self.encoder = Encoder(in_channels, [w, 2 * w, 4 * w, 8 * w, 8 * w])
        self.decoder = ReconstructiveDecoder(base_width, out_channels)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)[-1])


class DiscriminativeDecoder(nn.Module):
    """U-Net decoder: each stage upsamples, concatenates the encoder feature and convolves."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        w = width
        self.up_b = _up(8 * w, 8 * w)
        self.db_b = _block(16 * w, 8 * w)
        self.up1 = _up(8 * w, 4 * w)
        self.db1 = _block(12 * w, 4 * w)
        self.up2 = _up(4 * w, 2 * w)
        self.db2 = _block(6 * w, 2 * w)
        self.up3 = _up(2 * w, w)
        self.db3 = _block(3 * w, w)
        self.up4 = _up(w, w)
        self.db4 = _block(2 * w, w)
        self.fin_out = nn.Sequential(nn.Conv2d(w, out_channels, 3, padding=1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        b1, b2, b3, b4, b5, b6 = features
        x = self.db_b(torch.cat((self.up_b(b6), b5), dim=1))
        x = self.db1(torch.cat((self.up1(x), b4), dim=1))
        x = self.db2(torch.cat((self.up2(x), b3), dim=1))
        x = self.db3(torch.cat((self.up3(x), b2), dim=1))
        x = self.db4(torch.cat((self.up4(x), b1), dim=1))
        return self.fin_out(x)


class DiscriminativeSubNetwork(nn.Module):
    """U-Net on cat(reconstruction, input): (B, 6, H, W) -> 2-channel logits (B, 2, H, W)."""

    def __init__(self, in_channels: int = 6, out_channels: int = 2, base_channels: int = 64) -> None:
        super().__init__()
        w = base_channels
        self.encoder_segment = Encoder(in_channels, [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w])
        self.decoder_segment = DiscriminativeDecoder(base_channels, out_channels)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder_segment(self.encoder_segment(x))
