"""A per-pixel Gaussian of normal images: the smallest method that trains, tests, predicts and deploys in draem.

Training collects each pixel's mean over the training images (a stage without an optimiser), then finishes with
a second pass for the variance (`finish_training`). The anomaly map is 1 - exp(-z^2 / 2), z^2 being a pixel's
squared z-score averaged over the colour channels: 0 at the mean, towards 1 far from it. Statistics live on a
`grid` x `grid` raster, so the model's size does not depend on the image size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from draem.methods import register
from draem.methods.base import AnomalyModel, Options, PaperLength, Stage, TrainBatch, Update, option, require_positive


@dataclass
class PixelGaussianOptions(Options):
    """The raster the statistics live on and the variance floor."""

    grid: int = option(64, "side of the raster each pixel's mean and variance are kept on")
    min_variance: float = option(1e-4, "floor of each pixel's variance, so flat regions do not divide by zero")

    def validate(self) -> None:
        super().validate()
        require_positive(grid=self.grid)


@register
class PixelGaussian(AnomalyModel):
    """Each pixel of a normal image drawn from its own Gaussian; anomalies are pixels far from it."""

    name = "pixel-gaussian"
    """What `--method` names it by."""
    paper = "a worked example (docs/adding-a-method.md)"
    headline = "no paper figures"
    Options = PixelGaussianOptions
    paper_length = PaperLength(1, "epochs")
    """One pass over the images is all the statistics need; runs without --max-steps or --epochs take one."""
    presets: ClassVar[dict[str, dict]] = {"full": {}, "demo": {"grid": 32}}
    loss_terms = ()
    """Nothing is trained by gradient, so there are no loss terms to log."""

    def __init__(self, options: PixelGaussianOptions | None = None) -> None:
        super().__init__(options or PixelGaussianOptions())
        side = self.options.grid
        self.register_buffer("total", torch.zeros(3, side, side, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(3, side, side))
        self.register_buffer("variance", torch.ones(3, side, side))

    def stages(self, total_steps: int) -> list[Stage]:
        return [Stage("collect", 1.0, [], {})]

    def on_grid(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) resampled onto the statistics' raster."""
        return F.interpolate(images.float(), size=(self.options.grid,) * 2, mode="area")

    def training_step(self, batch: TrainBatch, stage: Stage, update: Update) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            self.total += self.on_grid(batch.images).sum(dim=0).double()
            self.count += len(batch.images)
        return {}

    def finish_training(self, images: Iterable[torch.Tensor]) -> None:
        self.mean.copy_((self.total / self.count.clamp(min=1)).float())
        squares = torch.zeros_like(self.total)
        seen = 0
        for batch in images:
            squares += (self.on_grid(batch) - self.mean).square().sum(dim=0).double()
            seen += len(batch)
        self.variance.copy_((squares / max(seen, 1)).float().clamp(min=self.options.min_variance))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        z_squared = ((self.on_grid(images) - self.mean).square() / self.variance).mean(dim=1, keepdim=True)
        far = 1 - torch.exp(-z_squared / 2)
        return F.interpolate(far, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
