"""Batched 2-D Perlin noise with a separate lattice resolution per sample."""

from __future__ import annotations

import math

import torch

MAX_LATTICE = 32


def _fade(t: torch.Tensor) -> torch.Tensor:
    return ((6 * t - 15) * t + 10) * t * t * t


def perlin_noise(angles: torch.Tensor, resolution: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Perlin noise (B, H, W) from gradient angles (B, Ly, Lx) on lattices of (B, 2) cells (y, x).

    Sample b uses the first resolution[b] + 1 lattice points per axis; values lie in [-1, 1].
    """
    batch, _, lattice_x = angles.shape
    device = angles.device
    res = resolution.to(device=device, dtype=torch.float32)
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    pos_y = rows[None, :] * res[:, 0:1] / height
    pos_x = cols[None, :] * res[:, 1:2] / width
    cell_y, cell_x = pos_y.floor().long(), pos_x.floor().long()
    frac_y = (pos_y - cell_y)[:, :, None]
    frac_x = (pos_x - cell_x)[:, None, :]
    grad_y, grad_x = torch.cos(angles).flatten(1), torch.sin(angles).flatten(1)

    def corner(dy: int, dx: int) -> torch.Tensor:
        index = (cell_y[:, :, None] + dy) * lattice_x + (cell_x[:, None, :] + dx)
        flat = index.flatten(1)
        gy = torch.gather(grad_y, 1, flat).view(batch, height, width)
        gx = torch.gather(grad_x, 1, flat).view(batch, height, width)
        return (frac_y - dy) * gy + (frac_x - dx) * gx

    fade_y, fade_x = _fade(frac_y), _fade(frac_x)
    top = torch.lerp(corner(0, 0), corner(1, 0), fade_y)
    bottom = torch.lerp(corner(0, 1), corner(1, 1), fade_y)
    return math.sqrt(2.0) * torch.lerp(top, bottom, fade_x)


def random_perlin_noise(batch: int, height: int, width: int, min_scale: int, max_scale: int,
                        generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise whose lattice is (2^a, 2^b) cells, a and b uniform integers in [min_scale, max_scale]."""
    if not 0 <= min_scale <= max_scale <= int(math.log2(MAX_LATTICE)):
        raise ValueError(f"Perlin scales must satisfy 0 <= {min_scale} <= {max_scale} <= 5")
    exponents = torch.randint(min_scale, max_scale + 1, (batch, 2), generator=generator)
    resolution = 2 ** exponents
    lattice = 2**max_scale + 1
    angles = 2 * math.pi * torch.rand(batch, lattice, lattice, generator=generator)
    return perlin_noise(angles.to(device), resolution.to(device), height, width)
