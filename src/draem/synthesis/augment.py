"""Batched tensor versions of the 10 imgaug augmenters DRAEM applies to anomaly-source textures.

Images are (B, 3, H, W) floats in [0, 1]. Parameters follow imgaug's units: intensities and
thresholds on the 0..255 scale, angles in degrees. The histogram-based ops quantise to 8-bit
levels as PIL and imgaug do on uint8 images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from draem.synthesis.transforms import luma, rotate

LEVELS = 256
_SMOOTH_KERNEL = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def _per_sample(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A (B,) parameter as a (B, 1, 1, 1) tensor on the images' device and dtype."""
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def _to_levels(images: torch.Tensor) -> torch.Tensor:
    """Nearest 8-bit levels (long, 0..255) of [0, 1] images."""
    return (images.float() * 255).round().clamp(0, 255).long()


def _from_levels(levels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return (levels.float() / 255).to(like.dtype)


def _histograms(levels: torch.Tensor) -> torch.Tensor:
    """One 256-bin histogram per (sample, channel) row: (B*C, 256) long."""
    rows = levels.shape[0] * levels.shape[1]
    offsets = torch.arange(rows, device=levels.device).view(*levels.shape[:2], 1, 1) * LEVELS
    return torch.bincount((levels + offsets).flatten(), minlength=rows * LEVELS).view(rows, LEVELS)


def _apply_lookup(levels: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Map each (sample, channel) plane's levels through its own 256-entry table."""
    flat = levels.reshape(tables.shape[0], -1)
    return torch.gather(tables, 1, flat).view(levels.shape)


def gamma_contrast(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """x ** gamma with a gamma per sample and channel, gamma (B, 3)."""
    exponent = gamma.to(device=images.device, dtype=images.dtype)[:, :, None, None]
    return images.clamp(0, 1) ** exponent


def multiply_and_add_to_brightness(images: torch.Tensor, mul: torch.Tensor,
                                   add: torch.Tensor) -> torch.Tensor:
    """YCrCb luma Y -> clip(Y * mul + add / 255) with chroma kept, per sample mul and add (B,)."""
    old = luma(images)
    new = (old * _per_sample(mul, images) + _per_sample(add, images) / 255).clamp(0, 1)
    # YCrCb -> RGB adds Y with weight 1 to every channel, so a luma change shifts all three.
    return (images + (new - old)).clamp(0, 1)


def enhance_sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness: blend from the SMOOTH-filtered image (0) to the image (1)."""
    batch, channels, height, width = images.shape
    kernel = _SMOOTH_KERNEL.to(images)[None, None]
    smoothed = F.conv2d(images.reshape(batch * channels, 1, height, width), kernel)
    degenerate = images.clone()
    degenerate[:, :, 1:-1, 1:-1] = smoothed.view(batch, channels, height - 2, width - 2)
    return torch.lerp(degenerate, images, _per_sample(factor, images)).clamp(0, 1)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, all three in [0, 1] (hue in turns, 0 for greys)."""
    value, brightest = images.max(dim=1, keepdim=True)
    chroma = value - images.amin(dim=1, keepdim=True)
    # Hue sector: (G - B) / C for a red maximum, (B - R) / C + 2 green, (R - G) / C + 4 blue.
    difference = (images.roll(-1, dims=1) - images.roll(1, dims=1)).gather(1, brightest)
    sector = difference / chroma.clamp(min=1e-12) + 2 * brightest
    hue = torch.where(chroma > 0, torch.remainder(sector / 6, 1.0), 0.0)
    saturation = torch.where(value > 0, chroma / value.clamp(min=1e-12), 0.0)
    return torch.cat([hue, saturation, value], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV (hue in turns) -> RGB in [0, 1]."""
    hue, saturation, value = (channel[:, None] for channel in hsv.unbind(dim=1))
    offsets = torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    sector = torch.remainder(offsets + hue * 6, 6)
    ramp = torch.minimum(sector, 4 - sector).clamp(0, 1)
    return value - value * saturation * ramp


def add_to_hue_and_saturation(images: torch.Tensor, hue: torch.Tensor,
                              saturation: torch.Tensor) -> torch.Tensor:
    """imgaug AddToHueAndSaturation with integer hue and saturation values (B,) in -255..255.

    Hue moves cyclically by trunc(hue * 180 / 255) of OpenCV's 180 hue steps; saturation
    (0..255 scale) is shifted and clipped; value is unchanged.
    """
    hsv = rgb_to_hsv(images.clamp(0, 1))
    hue_steps = torch.trunc(hue.double() * 180 / 255)
    new_hue = torch.remainder(hsv[:, 0:1] + _per_sample(hue_steps / 180, images), 1.0)
    new_saturation = (hsv[:, 1:2] + _per_sample(saturation.double() / 255, images)).clamp(0, 1)
    return hsv_to_rgb(torch.cat([new_hue, new_saturation, hsv[:, 2:3]], dim=1))


def solarize(images: torch.Tensor, threshold: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Where apply (B,) is set, invert pixels whose 8-bit level is >= int(threshold) (B,)."""
    cut = threshold.floor().to(device=images.device).view(-1, 1, 1, 1)
    chosen = apply.to(device=images.device).view(-1, 1, 1, 1) & (_to_levels(images) >= cut)
    return torch.where(chosen, 1 - images, images)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top `bits` (B,) bits, 1..8, of each 8-bit level (PIL ImageOps.posterize)."""
    keep = (LEVELS - 2 ** (8 - bits.long())).to(images.device).view(-1, 1, 1, 1)
    return _from_levels(torch.bitwise_and(_to_levels(images), keep), images)


def invert(images: torch.Tensor) -> torch.Tensor:
    """1 - x."""
    return 1 - images


def autocontrast(images: torch.Tensor, cutoff: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.autocontrast per channel, integer cutoff percent (B,) at both histogram ends."""
    levels = _to_levels(images)
    histogram = _histograms(levels)
    count = levels.shape[2] * levels.shape[3]
    cut = count * cutoff.long().to(levels.device) // 100
    cut = cut.repeat_interleave(levels.shape[1])[:, None]
    cumulative = histogram.cumsum(dim=1)
    from_top = count - (cumulative - histogram)
    low = (cumulative <= cut).sum(dim=1, keepdim=True)
    high = (from_top > cut).sum(dim=1, keepdim=True) - 1
    # A true division, as PIL's Python does: `255.0 / tensor` would multiply by a reciprocal.
    scale = torch.full_like(low, 255, dtype=torch.float64) / (high - low).clamp(min=1)
    offset = -low.double() * scale
    ramp = torch.arange(LEVELS, device=levels.device)
    stretched = (ramp.double() * scale + offset).trunc().clamp(0, 255).long()
    tables = torch.where(high > low, stretched, ramp)
    return _from_levels(_apply_lookup(levels, tables), images)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.equalize per channel on 256 levels."""
    levels = _to_levels(images)
    histogram = _histograms(levels)
    ramp = torch.arange(LEVELS, device=levels.device)
    present = histogram > 0
    last = (ramp * present).amax(dim=1, keepdim=True)
    step = (histogram.sum(dim=1, keepdim=True) - histogram.gather(1, last)) // 255
    below = histogram.cumsum(dim=1) - histogram
    equalized = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    identity = (present.sum(dim=1, keepdim=True) <= 1) | (step == 0)
    tables = torch.where(identity, ramp, equalized)
    return _from_levels(_apply_lookup(levels, tables), images)


def affine_rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate about the centre by degrees (B,), counter-clockwise; bilinear, zeros outside."""
    return rotate(images, degrees)


_AUGMENTERS: dict[str, Callable[..., torch.Tensor]] = {
    "gamma_contrast": gamma_contrast,
    "multiply_and_add_to_brightness": multiply_and_add_to_brightness,
    "enhance_sharpness": enhance_sharpness,
    "add_to_hue_and_saturation": add_to_hue_and_saturation,
    "solarize": solarize,
    "posterize": posterize,
    "invert": invert,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "affine_rotate": affine_rotate,
}
AUGMENTER_NAMES: tuple[str, ...] = tuple(_AUGMENTERS)


def _uniform(shape: tuple[int, ...], low: float, high: float,
             generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _integers(batch: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform integers in [low, high], both included."""
    return torch.randint(low, high + 1, (batch,), generator=generator)


def draw_augmenter_parameters(batch: int,
                              generator: torch.Generator) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per-sample parameters of every augmenter, on the CPU, in the ranges of the authors' list."""
    return {
        "gamma_contrast": (_uniform((batch, 3), 0.5, 2.0, generator),),
        "multiply_and_add_to_brightness": (_uniform((batch,), 0.8, 1.2, generator),
                                           _uniform((batch,), -30.0, 30.0, generator)),
        "enhance_sharpness": (_uniform((batch,), 0.0, 2.0, generator),),
        "add_to_hue_and_saturation": (_integers(batch, -50, 50, generator),
                                      _integers(batch, -50, 50, generator)),
        "solarize": (_uniform((batch,), 32.0, 128.0, generator),
                     torch.rand(batch, generator=generator) < 0.5),
        "posterize": (_integers(batch, 1, 8, generator),),
        "invert": (),
        "autocontrast": (_integers(batch, 0, 20, generator),),
        "equalize": (),
        "affine_rotate": (_uniform((batch,), -45.0, 45.0, generator),),
    }


@dataclass(frozen=True)
class AugmentationPlan:
    """Which augmenters each sample gets, in order, and every augmenter's per-sample parameters."""

    choices: torch.Tensor
    parameters: dict[str, tuple[torch.Tensor, ...]]


def draw_augmentation_plan(batch: int, generator: torch.Generator,
                           per_sample: int = 3) -> AugmentationPlan:
    """Draw `per_sample` distinct augmenters per sample in random order, plus all parameters."""
    if not 0 <= per_sample <= len(AUGMENTER_NAMES):
        raise ValueError(f"per_sample must be in 0..{len(AUGMENTER_NAMES)}, got {per_sample}")
    order = torch.rand(batch, len(AUGMENTER_NAMES), generator=generator).argsort(dim=1)
    return AugmentationPlan(order[:, :per_sample], draw_augmenter_parameters(batch, generator))


def apply_augmentation_plan(images: torch.Tensor, plan: AugmentationPlan) -> torch.Tensor:
    """Run the plan: at each step, each augmenter processes the samples that drew it there."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    result = images.to(torch.float32, copy=True)
    for step in range(plan.choices.shape[1]):
        for index, name in enumerate(AUGMENTER_NAMES):
            rows = (plan.choices[:, step] == index).nonzero().flatten()
            if len(rows) == 0:
                continue
            parameters = [values[rows] for values in plan.parameters[name]]
            on_device = rows.to(images.device)
            result[on_device] = _AUGMENTERS[name](result[on_device], *parameters)
    return result.to(images.dtype)


def augment_anomaly_sources(images: torch.Tensor, generator: torch.Generator,
                            per_sample: int = 3) -> torch.Tensor:
    """DRAEM's source augmentation: `per_sample` distinct random augmenters per image, any device.

    All randomness comes from the CPU `generator`, so a seed gives the same draws on every device.
    """
    plan = draw_augmentation_plan(len(images), generator, per_sample)
    return apply_augmentation_plan(images, plan)
