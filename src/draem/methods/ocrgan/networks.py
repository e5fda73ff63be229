"""OCR-GAN's networks: one pix2pix U-Net per frequency band joined by channel selection, and a DCGAN discriminator."""

from __future__ import annotations

import torch
from torch import nn

FEATURES = 100
"""Width of the discriminator's feature vector (the authors' nz)."""
MIN_HIDDEN = 32
"""Smallest width of the channel-selection bottleneck (the authors' L); otherwise half the channels (r = 2)."""


def _normal(tensor: torch.Tensor, mean: float, std: float, generator: torch.Generator | None) -> None:
    """Fill a tensor with N(mean, std) drawn on the CPU (from `generator`, or the global RNG), on any device."""
    tensor.copy_(torch.normal(mean, std, tuple(tensor.shape), generator=generator))


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """The authors' initialisation: convolution and linear weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases
    0; BatchNorm running statistics start afresh."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        _normal(module.weight, 0.0, 0.02, generator)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.BatchNorm2d):
        _normal(module.weight, 1.0, 0.02, generator)
        module.bias.zero_()
        module.reset_running_stats()


def unet_widths(width: int, depth: int) -> list[int]:
    """Channels of the U-Net's levels: w, 2w, 4w, then 8w (pix2pix)."""
    return [width * min(2**level, 8) for level in range(depth)]


def _down(c_in: int, c_out: int, outermost: bool, innermost: bool) -> nn.Sequential:
    """Halve the resolution: (LeakyReLU 0.2,) 4x4 stride-2 convolution (, BatchNorm); pix2pix's order."""
    layers: list[nn.Module] = [] if outermost else [nn.LeakyReLU(0.2)]
    layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False))
    if not (outermost or innermost):
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers)


def _up(c_in: int, c_out: int, outermost: bool) -> nn.Sequential:
    """Double the resolution: ReLU, 4x4 stride-2 transposed convolution, then BatchNorm (tanh at the output)."""
    convolution = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=outermost)
    return nn.Sequential(nn.ReLU(), convolution, nn.Tanh() if outermost else nn.BatchNorm2d(c_out))


class BranchUNet(nn.Module):
    """One band's U-Net: `depth` halvings down (`down.i`), as many doublings up (`up.i`), skips by concatenation;
    (B, 3, H, W) in [-1, 1] -> the same shape in [-1, 1]. The generator runs its levels."""

    def __init__(self, width: int, depth: int, channels: int = 3) -> None:
        super().__init__()
        widths = unet_widths(width, depth)
        self.down = nn.ModuleList(
            _down(c_in, c_out, level == 0, level == depth - 1)
            for level, (c_in, c_out) in enumerate(zip([channels, *widths[:-1]], widths, strict=True)))
        self.up = nn.ModuleList(
            _up(widths[level] * (1 if level == depth - 1 else 2), widths[level - 1] if level else channels, level == 0)
            for level in range(depth))

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """The output from the encoder's features at every level (the last is the bottleneck)."""
        x = skips[-1]
        for level in reversed(range(len(self.up))):
            x = self.up[level](x)
            if level:
                x = torch.cat((x, skips[level - 1]), dim=1)
        return x


class ChannelSelection(nn.Module):
    """Reweights the branches' channels: sum the branches, average-pool, a bottleneck (FC + ReLU), one FC head per
    branch, softmax across the branches per channel."""

    def __init__(self, channels: int, branches: int) -> None:
        super().__init__()
        hidden = max(channels // 2, MIN_HIDDEN)
        self.squeeze = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, channels) for _ in range(branches))

    def weights(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Per-channel weights (branches, B, C) of the branches' features (B, C, H, W); they sum to 1 over branches."""
        pooled = torch.stack(features).sum(dim=0).mean(dim=(2, 3))
        hidden = self.squeeze(pooled)
        return torch.softmax(torch.stack([head(hidden) for head in self.heads]), dim=0)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        weights = self.weights(features)
        return [f * w[:, :, None, None].to(f.dtype) for f, w in zip(features, weights, strict=True)]


class FrequencyGenerator(nn.Module):
    """One U-Net per band (`branches.<band>`); with channel selection (`selection.<level>`), the bands' encoder
    features are reweighted at every level before they go deeper and into the skips."""

    def __init__(self, bands: tuple[str, ...], width: int, depth: int, channel_selection: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({band: BranchUNet(width, depth) for band in bands})
        self.selection = nn.ModuleList(ChannelSelection(channels, len(bands)) for channels in
                                       unet_widths(width, depth)) if channel_selection else nn.ModuleList()
        self.apply(init_weights)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The branches' outputs (each in [-1, 1]) of their normalised bands, in the order of `bands`."""
        branches = list(self.branches.values())
        features, skips = inputs, []
        for level in range(len(branches[0].down)):
            features = [branch.down[level](x) for branch, x in zip(branches, features, strict=True)]
            if self.selection:
                features = self.selection[level](features)
            skips.append(features)
        return [branch.decode([level[index] for level in skips]) for index, branch in enumerate(branches)]


class Discriminator(nn.Module):
    """DCGAN encoder (`encoder`) to a FEATURES-wide vector and a real/fake classifier (`classifier`, a logit).

    A 4x4 stride-2 convolution and LeakyReLU, `halvings` more with BatchNorm (widths doubling), and a 4x4
    convolution without padding: at 4 x 2**(halvings + 1) pixels the map is 1x1, as the authors'; larger
    images give a larger map, averaged.
    """

    def __init__(self, width: int, halvings: int, channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1, bias=False), nn.LeakyReLU(0.2)]
        for level in range(halvings):
            c_in, c_out = width * 2**level, width * 2 ** (level + 1)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width * 2**halvings, FEATURES, 4, bias=False))
        self.encoder = nn.Sequential(*layers)
        self.classifier = nn.Linear(FEATURES, 1)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real/fake logits (B,), features (B, FEATURES)) of images in [-1, 1]."""
        features = self.encoder(images).mean(dim=(2, 3))
        return self.classifier(features)[:, 0], features
