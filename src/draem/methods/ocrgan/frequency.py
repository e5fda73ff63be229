"""Frequency decoupling: one level of a Laplacian pyramid splits an image into a low and a high band.

low = up(down(I)) with OpenCV's pyrDown / pyrUp filter (5-tap binomial [1, 4, 6, 4, 1] / 16; borders
reflected going down, replicated going up), high = I - low, signed and in float, so high + low = I up to
one float rounding. Each band is normalised on its own to [-1, 1] by a fixed affine map: low (in [0, 1],
a convex blur of the image) as 2 low - 1, high (in [-1, 1] as a difference of two such images) as it is.
A branch's output is mapped back with its band's inverse, and the reconstruction is the sum over the
branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BANDS = ("low", "high")
NORMALISATION = {"low": (2.0, -1.0), "high": (1.0, 0.0)}
"""Each band's (scale, shift) to the networks' [-1, 1]: normalised = scale * band + shift."""


def binomial_kernel(images: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """The 5x5 binomial filter (outer product of [1, 4, 6, 4, 1] / 16) times `gain`, one per channel (C, 1, 5, 5)."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=images.dtype, device=images.device) / 16
    return (gain * taps[:, None] * taps[None, :]).expand(images.shape[1], 1, 5, 5)


def pyramid_down(images: torch.Tensor) -> torch.Tensor:
    """Blur and keep every second row and column (OpenCV pyrDown): (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, binomial_kernel(images), stride=2, groups=images.shape[1])


def pyramid_up(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample by 2 (OpenCV pyrUp: zeros between the samples, then the binomial filter times 4), cut to `size`.

    A transposed convolution of stride 2 over the input with its border replicated: every output pixel is a
    convex combination of input pixels, so constants stay constant.
    """
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    upsampled = F.conv_transpose2d(padded, binomial_kernel(images, 4.0), stride=2, padding=4, output_padding=1,
                                   groups=images.shape[1])
    return upsampled[..., :size[0], :size[1]]


def decouple(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) bands of images (B, C, H, W): low = up(down(I)), high = I - low (signed)."""
    low = pyramid_up(pyramid_down(images), images.shape[-2:])
    return low, images - low


def normalise(band: torch.Tensor, name: str) -> torch.Tensor:
    """A band on the networks' [-1, 1] scale."""
    scale, shift = NORMALISATION[name]
    return band * scale + shift


def denormalise(output: torch.Tensor, name: str) -> torch.Tensor:
    """A branch's output on [-1, 1] back in its band's image-space units."""
    scale, shift = NORMALISATION[name]
    return (output - shift) / scale


def band_inputs(images: torch.Tensor, names: tuple[str, ...]) -> list[torch.Tensor]:
    """The normalised bands `names` (some of BANDS) of images in [0, 1], the branches' inputs."""
    bands = dict(zip(BANDS, decouple(images), strict=True))
    return [normalise(bands[name], name) for name in names]


def recompose(outputs: list[torch.Tensor], names: tuple[str, ...]) -> torch.Tensor:
    """The reconstruction in image space: the sum of the branches' denormalised outputs."""
    return sum(denormalise(output, name) for output, name in zip(outputs, names, strict=True))
