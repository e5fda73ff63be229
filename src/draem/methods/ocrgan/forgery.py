"""OCR-GAN's forged abnormal samples: a CutPaste patch with colour jitter, then a Cutout hole.

As the authors' code: a patch of 2-15 % of the image's area with aspect ratio in [0.3, 1/0.3] is cut
from the image itself, jittered as torchvision's ColorJitter(0.1, 0.1, 0.1, 0.1) (brightness, contrast
and saturation factors in [0.9, 1.1], hue shifted by up to 0.1 turn, in a random order) and pasted at a
random place; then a square of `cutout` pixels, centred on a random pixel and cut at the border, is set
to black.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from draem.synthesis.augment import hsv_to_rgb, rgb_to_hsv
from draem.synthesis.transforms import luma

AREA = (0.02, 0.15)
"""The patch's share of the image's area."""
ASPECT = 0.3
"""The patch's width / height lies in [ASPECT, 1 / ASPECT]."""
JITTER = 0.1
"""ColorJitter's strength for brightness, contrast, saturation and hue."""


def brightness(patch: torch.Tensor, factor: float) -> torch.Tensor:
    """A patch (3, h, w) scaled by `factor`."""
    return (patch * factor).clamp(0, 1)


def contrast(patch: torch.Tensor, factor: float) -> torch.Tensor:
    """A patch blended with its mean grey level: `factor` 1 keeps it."""
    return torch.lerp(luma(patch[None]).mean(), patch, factor).clamp(0, 1)


def saturation(patch: torch.Tensor, factor: float) -> torch.Tensor:
    """A patch blended with its grey version: `factor` 1 keeps it."""
    return torch.lerp(luma(patch[None])[0], patch, factor).clamp(0, 1)


def hue(patch: torch.Tensor, shift: float) -> torch.Tensor:
    """A patch with its hue turned by `shift` turns."""
    hsv = rgb_to_hsv(patch[None])
    hsv[:, 0] = torch.remainder(hsv[:, 0] + shift, 1.0)
    return hsv_to_rgb(hsv)[0]


JITTERS: tuple[Callable[[torch.Tensor, float], torch.Tensor], ...] = (brightness, contrast, saturation, hue)


@dataclass(frozen=True)
class ForgedImages:
    """Forged images (B, 3, H, W) in [0, 1], where the patch was pasted and where the hole was cut (B, 1, H, W)."""

    images: torch.Tensor
    pasted: torch.Tensor
    cut_out: torch.Tensor


def _boxes(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Per image (count, 6): patch height and width, source top and left, target top and left."""
    area = (AREA[0] + (AREA[1] - AREA[0]) * torch.rand(count, generator=generator)) * height * width
    aspect = ASPECT + (1 / ASPECT - ASPECT) * torch.rand(count, generator=generator)
    sides_h = torch.sqrt(area / aspect).round().clamp(1, height)
    sides_w = torch.sqrt(area * aspect).round().clamp(1, width)
    corners = torch.rand(count, 4, generator=generator) * torch.stack([height - sides_h, width - sides_w] * 2, dim=1)
    return torch.cat([sides_h[:, None], sides_w[:, None], corners.floor()], dim=1).long()


def _window(count: int, size: int, side: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end (count,) of a `side`-pixel span centred on a random pixel, cut at 0 and `size`."""
    centre = torch.randint(0, size, (count,), generator=generator)
    return (centre - side // 2).clamp(0, size), (centre + side // 2).clamp(0, size)


def forge(images: torch.Tensor, generator: torch.Generator, cutout: int) -> ForgedImages:
    """CutPaste with colour jitter, then a `cutout`-pixel Cutout, on images (B, 3, H, W) in [0, 1]; every draw
    from the CPU `generator`."""
    count, _, height, width = images.shape
    boxes = _boxes(count, height, width, generator)
    factors = 1 - JITTER + 2 * JITTER * torch.rand(count, 3, generator=generator)
    shifts = JITTER * (2 * torch.rand(count, 1, generator=generator) - 1)
    amounts = torch.cat([factors, shifts], dim=1).tolist()
    orders = torch.rand(count, len(JITTERS), generator=generator).argsort(dim=1).tolist()
    top, bottom = _window(count, height, cutout, generator)
    left, right = _window(count, width, cutout, generator)

    forged = images.clone()
    pasted = torch.zeros(count, 1, height, width, dtype=torch.bool, device=images.device)
    for index, (side_h, side_w, from_y, from_x, to_y, to_x) in enumerate(boxes.tolist()):
        patch = images[index, :, from_y:from_y + side_h, from_x:from_x + side_w]
        for operation in orders[index]:
            patch = JITTERS[operation](patch, amounts[index][operation])
        forged[index, :, to_y:to_y + side_h, to_x:to_x + side_w] = patch
        pasted[index, :, to_y:to_y + side_h, to_x:to_x + side_w] = True
    rows, cols = torch.arange(height), torch.arange(width)
    inside_rows = (rows[None] >= top[:, None]) & (rows[None] < bottom[:, None])
    inside_cols = (cols[None] >= left[:, None]) & (cols[None] < right[:, None])
    cut_out = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None].to(images.device)
    return ForgedImages(forged.masked_fill(cut_out, 0.0), pasted, cut_out)

