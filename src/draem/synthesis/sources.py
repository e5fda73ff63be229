"""Anomaly-source textures: a folder of images, or a built-in procedural generator."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from draem.data.images import fit_to_square, list_images, read_image
from draem.errors import DraemError
from draem.synthesis.perlin import random_perlin_noise
from draem.synthesis.transforms import luma


def list_texture_images(folder: str | Path) -> list[Path]:
    """Every image below `folder` (recursive); a clear error when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DraemError(f"{folder}: anomaly-source folder not found")
    paths = list_images(folder, recursive=True)
    if not paths:
        raise DraemError(f"{folder}: anomaly-source folder holds no images")
    return paths


def load_texture(path: Path, size: int) -> torch.Tensor:
    """One texture image squashed to size x size, as the authors resize it."""
    return fit_to_square(read_image(path), size, "resize")[0]


def _palette(batch: int, colours: int, generator: torch.Generator) -> torch.Tensor:
    """Random colour ramps (B, colours, 3): saturated or muted colours at varied brightness."""
    base = torch.rand(batch, colours, 3, generator=generator)
    grey = base.mean(dim=2, keepdim=True)
    saturation = torch.rand(batch, 1, 1, generator=generator) * 1.5
    return (grey + saturation * (base - grey)).clamp(0, 1)


def _colourise(field: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Map a field (B, H, W) in [0, 1] through a piecewise-linear colour ramp -> (B, 3, H, W)."""
    knots = torch.arange(palette.shape[1], device=field.device, dtype=field.dtype).view(1, -1, 1, 1)
    position = field.clamp(0, 1)[:, None] * (palette.shape[1] - 1)
    weights = (1 - (position - knots).abs()).clamp(min=0)
    return torch.einsum("bkhw,bkc->bchw", weights, palette)


def _fractal(batch: int, size: int, generator: torch.Generator, device: torch.device,
             octaves: int = 4) -> torch.Tensor:
    """Sum of Perlin octaves, normalised to [0, 1] per sample."""
    total = torch.zeros(batch, size, size, device=device)
    for octave in range(octaves):
        scale = min(1 + octave, 5)
        total += random_perlin_noise(batch, size, size, scale, scale, generator, device) / 2**octave
    low = total.flatten(1).amin(1).view(-1, 1, 1)
    high = total.flatten(1).amax(1).view(-1, 1, 1)
    return (total - low) / (high - low + 1e-6)


def _coordinates(batch: int, size: int, generator: torch.Generator,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates in [-1, 1] rotated by a random angle per sample."""
    axis = torch.linspace(-1, 1, size, device=device)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    angle = (torch.rand(batch, generator=generator) * math.pi).to(device).view(-1, 1, 1)
    return x * torch.cos(angle) + y * torch.sin(angle), -x * torch.sin(angle) + y * torch.cos(angle)


def procedural_textures(batch: int, size: int, generator: torch.Generator,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Coloured textures (B, 3, S, S) in [0, 1]: marble, warped stripes, checks, veins or spots."""
    device = torch.device(device)
    warp = _fractal(batch, size, generator, device)
    u, v = _coordinates(batch, size, generator, device)
    frequency = (4 + 28 * torch.rand(batch, generator=generator)).to(device).view(-1, 1, 1)
    strength = (6 * torch.rand(batch, generator=generator)).to(device).view(-1, 1, 1)
    fields = torch.stack([
        warp,
        0.5 + 0.5 * torch.sin(frequency * u + strength * warp),
        ((torch.sin(frequency * u) * torch.sin(frequency * v)) > 0).float() * 0.8 + 0.2 * warp,
        (1 - (4 * (warp - 0.5).abs()).clamp(0, 1)) ** 3,
        (_fractal(batch, size, generator, device, octaves=2) > 0.6).float() * 0.7 + 0.3 * warp,
    ], dim=1)
    family = torch.randint(0, fields.shape[1], (batch,), generator=generator).to(device)
    field = fields[torch.arange(batch, device=device), family]
    return _colourise(field, _palette(batch, 3, generator).to(device))


def solid_colours(batch: int, size: int, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Images (B, 3, S, S) of one uniformly random colour each."""
    colours = torch.rand(batch, 3, 1, 1, generator=generator).to(device)
    return colours.expand(-1, -1, size, size).contiguous()


def grey_sources(sources: torch.Tensor) -> torch.Tensor:
    """Anomaly sources made grey (luma in all three channels), for grey products."""
    return luma(sources).expand_as(sources).contiguous()
