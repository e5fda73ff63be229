"""Turn a batch of defect-free images into (target, simulated-anomaly image, mask) on its device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from draem.synthesis.augment import augment_anomaly_sources
from draem.synthesis.perlin import random_perlin_noise
from draem.synthesis.transforms import rotate


@dataclass(frozen=True)
class SimulationConfig:
    """The anomaly simulator's knobs; the defaults are the authors' code."""

    image_rotation_prob: float = 0.3
    image_rotation_degrees: float = 90.0
    anomaly_prob: float = 0.5
    perlin_min_scale: int = 0
    perlin_max_scale: int = 5
    noise_rotation_degrees: float = 90.0
    threshold: float = 0.5
    beta_min: float = 0.0
    beta_max: float = 0.8
    augmenters_per_source: int = 3
    mask_shape: str = "perlin"


@dataclass
class SimulatedBatch:
    """One training batch: target, its anomalous copy, the mask, the augmented source, the draws.

    A sample drawn for an anomaly whose mask comes out empty counts as normal, as in the authors' code.
    """

    target: torch.Tensor
    augmented: torch.Tensor
    mask: torch.Tensor
    source: torch.Tensor
    beta: torch.Tensor
    anomaly_drawn: torch.Tensor
    has_anomaly: torch.Tensor


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator)


def random_rectangles(batch: int, height: int, width: int, generator: torch.Generator,
                      device: torch.device | str = "cpu", most: int = 3) -> torch.Tensor:
    """Masks (B, 1, H, W) of 1 to `most` axis-aligned rectangles, sides 5-35 % of the image's."""
    counts = torch.randint(1, most + 1, (batch,), generator=generator)
    sides = 0.05 + 0.3 * torch.rand(batch, most, 2, generator=generator)
    corners = torch.rand(batch, most, 2, generator=generator) * (1 - sides)
    ys = torch.linspace(0, 1, height, device=device).view(1, 1, -1, 1)
    xs = torch.linspace(0, 1, width, device=device).view(1, 1, 1, -1)
    top, left = corners[..., 0].to(device)[..., None, None], corners[..., 1].to(device)[..., None, None]
    bottom, right = top + sides[..., 0].to(device)[..., None, None], left + sides[..., 1].to(device)[..., None, None]
    inside = (ys >= top) & (ys <= bottom) & (xs >= left) & (xs <= right)
    used = (torch.arange(most).view(1, -1) < counts.view(-1, 1)).to(device)[..., None, None]
    return (inside & used).any(dim=1, keepdim=True).float()


def blend(image: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """I_a = (1 - M) I + M ((1 - beta) A + beta I), beta per sample."""
    beta = beta.view(-1, 1, 1, 1).to(image)
    return (1 - mask) * image + mask * ((1 - beta) * source + beta * image)


def simulate_anomalies(images: torch.Tensor, sources: torch.Tensor, generator: torch.Generator,
                       config: SimulationConfig = SimulationConfig()) -> SimulatedBatch:
    """Simulate DRAEM anomalies on images (B, 3, H, W) in [0, 1] with source textures of the same shape.

    Every random draw comes from the CPU `generator`, so a seed gives the same batch on any device.
    """
    batch, _, height, width = images.shape
    device = images.device

    rotate_image = torch.rand(batch, generator=generator) < config.image_rotation_prob
    image_angles = _uniform(batch, -config.image_rotation_degrees, config.image_rotation_degrees,
                            generator)
    target = torch.where(rotate_image.to(device).view(-1, 1, 1, 1),
                         rotate(images, image_angles * rotate_image), images)

    if config.mask_shape == "rect":
        shapes = random_rectangles(batch, height, width, generator, device)
    else:
        noise = random_perlin_noise(batch, height, width, config.perlin_min_scale,
                                    config.perlin_max_scale, generator, device)
        noise_angles = _uniform(batch, -config.noise_rotation_degrees, config.noise_rotation_degrees,
                                generator)
        shapes = (rotate(noise[:, None], noise_angles) > config.threshold).float()
    wants_anomaly = torch.rand(batch, generator=generator) < config.anomaly_prob
    mask = shapes.to(images.dtype) * wants_anomaly.to(device).view(-1, 1, 1, 1)

    augmented_sources = sources.clone()
    chosen = wants_anomaly.nonzero().flatten().to(device)
    if len(chosen) and config.augmenters_per_source:
        augmented_sources[chosen] = augment_anomaly_sources(sources[chosen], generator,
                                                            config.augmenters_per_source)
    beta = _uniform(batch, config.beta_min, config.beta_max, generator)
    augmented = blend(target, augmented_sources, mask, beta)
    has_anomaly = mask.flatten(1).amax(dim=1) > 0
    return SimulatedBatch(target, augmented, mask, augmented_sources, beta.to(device),
                          wants_anomaly.to(device), has_anomaly)
