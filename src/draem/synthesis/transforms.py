"""Pixel and geometric transforms shared by the simulator and the augmenters."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each (C, H, W) image of a batch about its centre; bilinear, zeros outside."""
    radians = degrees.to(device=images.device, dtype=torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    height, width = images.shape[-2:]
    aspect = height / width
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin * aspect, zero], dim=1),
                         torch.stack([sin / aspect, cos, zero], dim=1)], dim=1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).to(images.dtype)


LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (B, 1, H, W) of RGB images (B, 3, H, W)."""
    red, green, blue = images.unbind(dim=1)
    return (LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue)[:, None]
