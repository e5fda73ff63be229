"""Heatmaps and overlays of anomaly maps: tensors in, tensors out."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

# Anchor colours of a dark-blue -> cyan -> yellow -> red ramp, evenly spaced in [0, 1].
HEAT_ANCHORS = torch.tensor([
    [0.05, 0.03, 0.35], [0.00, 0.35, 0.85], [0.00, 0.75, 0.85], [0.45, 0.90, 0.35],
    [0.98, 0.85, 0.10], [0.95, 0.40, 0.05], [0.75, 0.02, 0.05],
])


def heatmap(values: torch.Tensor) -> torch.Tensor:
    """Colour a map (H, W) in [0, 1] with the heat ramp -> (3, H, W)."""
    knots = torch.arange(len(HEAT_ANCHORS), dtype=torch.float32).view(-1, 1, 1)
    position = values.float().clamp(0, 1)[None] * (len(HEAT_ANCHORS) - 1)
    weights = (1 - (position - knots).abs()).clamp(min=0)
    return torch.einsum("khw,kc->chw", weights, HEAT_ANCHORS)


@dataclass(frozen=True)
class ColourScale:
    """Where a method's map values fall on the heat ramp: `low` cold, `threshold` mid-ramp, `high` hot."""

    low: float = 0.0
    threshold: float = 0.5
    high: float = 1.0

    @classmethod
    def of(cls, thresholds: dict[str, Any]) -> ColourScale:
        """The scale of a calibrated run (its pixel threshold and the range of its calibration maps); [0, 1]
        for an uncalibrated one."""
        if not thresholds:
            return cls()
        low, cut, high = (float(thresholds[k]) for k in ("pixel_low", "pixel", "pixel_high"))
        return cls(min(low, cut), cut, max(high, cut + 1e-6))

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Map values to [0, 1] piecewise linearly: low -> 0, threshold -> 0.5, high -> 1."""
        values = values.float()
        below = 0.5 * (values - self.low) / max(self.threshold - self.low, 1e-12)
        above = 0.5 + 0.5 * (values - self.threshold) / max(self.high - self.threshold, 1e-12)
        return torch.where(values < self.threshold, below, above).clamp(0, 1)


UNIT_SCALE = ColourScale()
"""The scale of maps that live in [0, 1] with the decision at 0.5 (DRAEM's softmax)."""


def overlay(image: torch.Tensor, anomaly_map: torch.Tensor, scale: ColourScale = UNIT_SCALE,
            strength: float = 0.6) -> torch.Tensor:
    """Blend the heatmap of a map, coloured on `scale`, over an RGB image (3, H, W); more opaque where hot."""
    heat = scale(anomaly_map)
    opacity = strength * (0.35 + 0.65 * heat)[None]
    return (1 - opacity) * image.float() + opacity * heatmap(heat)


def mask_outline(image: torch.Tensor, mask: torch.Tensor, colour: tuple[float, float, float] = (1.0, 0.1, 0.1)
                 ) -> torch.Tensor:
    """Draw the one-pixel border of a boolean mask (H, W) on an RGB image (3, H, W)."""
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))
    eroded = -torch.nn.functional.max_pool2d(-padded, 3, stride=1)[0, 0] > 0.5
    edge = mask & ~eroded
    out = image.float().clone()
    out[:, edge] = torch.tensor(colour)[:, None]
    return out


def to_pil(image: torch.Tensor) -> Image.Image:
    """An RGB (3, H, W) or grey (H, W) tensor in [0, 1] as an 8-bit PIL image."""
    array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if array.dim() == 3:
        array = array.permute(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(array.numpy()))


def map_to_png16(anomaly_map: torch.Tensor) -> Image.Image:
    """An anomaly map (H, W) in [0, 1] as a 16-bit greyscale PNG image (value * 65535)."""
    array = (anomaly_map.float().clamp(0, 1) * 65535).round().numpy().astype(np.uint16)
    return Image.fromarray(array)


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG."""
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()
