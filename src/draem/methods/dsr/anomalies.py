"""DSR's simulated anomalies: codes replaced in the quantised feature space (stage 2) and colour smudges (stage 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from draem.methods.dsr.networks import VectorQuantizerEMA
from draem.synthesis.simulator import SimulatedBatch, SimulationConfig, simulate_anomalies
from draem.synthesis.sources import solid_colours

NEAREST_EXCLUDED = 0.05
"""Share of the codebook nearest to a feature that is never drawn as its replacement (the authors' 5 %)."""

LATENT_MASKS = SimulationConfig(image_rotation_prob=0.4, anomaly_prob=0.5, augmenters_per_source=0)
"""Stage 2 (the authors' code): the image rotated by up to 90 degrees with probability 0.4; rotated Perlin masks
of scales 2^0..2^5 thresholded at 0.5 on half the images."""

SMUDGES = SimulationConfig(image_rotation_prob=0.3, anomaly_prob=0.5, beta_min=0.0, beta_max=0.8,
                           augmenters_per_source=0)
"""Stage 3 (the authors' code): the same masks filled with one random solid colour at opacity beta in [0, 0.8]."""


def replacement_band(codes: int, strength: float) -> tuple[int, int]:
    """Ranks [first, end) of the codes, nearest first, that a feature of anomaly strength s may be replaced by.

    The authors': the int(s K) + 1 nearest codes (at most K - 1) without the nearest 5 % (at least one stays).
    """
    end = max(1, min(int(strength * codes) + 1, codes - 1))
    return min(int(codes * NEAREST_EXCLUDED), end - 1), end


def latent_anomalies(features: torch.Tensor, quantized: torch.Tensor, quantizer: VectorQuantizerEMA,
                     mask: torch.Tensor, strength: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Quantised features (B, D, h, w) whose masked positions hold codes drawn uniformly from the allowed band.

    The band is ranked by the distance of the pre-quantisation `features` to every code; `mask` (B, 1, h, w) is
    1 where a position is replaced, `strength` (B,) is each image's s. Every draw comes from the CPU `generator`,
    one per position whether masked or not, so the result does not depend on the device.
    """
    batch, _, height, width = features.shape
    codes = quantizer.codebook.shape[0]
    draws = torch.rand(batch, height, width, generator=generator).to(features.device)
    result = quantized.clone()
    for index in range(batch):
        where = mask[index, 0] > 0
        if not where.any():
            continue
        first, end = replacement_band(codes, float(strength[index]))
        distances = quantizer.distances(features[index:index + 1])[0][where]
        ranked = torch.topk(distances, end, dim=-1, largest=False).indices[:, first:]
        picks = (draws[index][where] * (end - first)).long().clamp(max=end - first - 1)
        chosen = ranked.gather(1, picks[:, None])[:, 0]
        result[index][:, where] = quantizer.codebook[chosen].t().to(result.dtype)
    return result


def pool_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A full-resolution mask (B, 1, H, W) at feature size (h, w): a position is masked where any pixel is."""
    return F.adaptive_max_pool2d(mask, size)


def unpool_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A feature-size mask back at image size (H, W), each position a block of pixels (nearest neighbour)."""
    return F.interpolate(mask, size=size, mode="nearest")


def colour_smudges(images: torch.Tensor, generator: torch.Generator) -> SimulatedBatch:
    """Stage 3's training images: Perlin-shaped smudges of one random colour per image on half the images."""
    colours = solid_colours(len(images), images.shape[-1], generator, images.device)
    return simulate_anomalies(images, colours, generator, SMUDGES)


def latent_anomaly_masks(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2's (possibly rotated) images and their Perlin masks (B, 1, H, W), empty on half the images."""
    simulated = simulate_anomalies(images, images, generator, LATENT_MASKS)
    return simulated.target, simulated.mask
