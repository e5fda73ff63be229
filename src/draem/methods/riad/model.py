"""RIAD as a method: a U-Net learns to inpaint removed grid cells of normal images; poor inpainting is anomalous.

Each image is cut into square cells of k x k pixels (k from `--cell-sizes`); the cells are split at random into
three disjoint sets of (near) equal size, as in the public RIAD code (`np.array_split` of a permutation). Copy j
of the image has set j removed (set to 0 in the network's [-1, 1] input: mid grey); the three copies go through
the network in one batch and each pixel of the inpainted image is taken from the copy that lacked it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from draem.errors import DraemError
from draem.losses import msgms_loss, msgms_map, ssim
from draem.methods import register
from draem.methods.base import (
    AnomalyModel,
    Options,
    PaperLength,
    Stage,
    TrainBatch,
    Update,
    adam,
    option,
    require_positive,
    require_positive_rate,
)
from draem.methods.riad.networks import InpaintingUNet
from draem.scoring import mean_filter

COPIES = 3
"""The number of disjoint cell sets, hence of masked copies inpainted per image (the paper's n = 3)."""


@dataclass
class RiadOptions(Options):
    """RIAD's network, cell sizes, loss weights, optimiser and map smoothing; defaults from the paper and its code."""

    width: int = option(64, "base width of the U-Net (its widths are w, 2w, 4w, 8w, 8w)")
    cell_sizes: tuple[float, ...] = option((2.0, 4.0, 8.0, 16.0), "sides in pixels of the square cells that are "
                                           "removed and inpainted; one drawn per training batch, all averaged "
                                           "in the anomaly map")
    lr: float = option(1e-4, "Adam learning rate (constant)")
    weight_decay: float = option(1e-5, "Adam weight decay")
    msgms_weight: float = option(1.0, "weight of the multi-scale gradient-magnitude similarity loss")
    ssim_weight: float = option(1.0, "weight of the 1 - SSIM loss")
    l2_weight: float = option(1.0, "weight of the mean squared error")
    map_smoothing: int = option(21, "side of the mean filter applied to the anomaly map (1: none)")

    def validate(self) -> None:
        super().validate()
        require_positive(width=self.width)
        require_positive_rate(lr=self.lr)
        if not self.cell_sizes or not all(math.isfinite(k) and k >= 1 and k == int(k) for k in self.cell_sizes):
            raise DraemError(f"--cell-sizes {' '.join(map(str, self.cell_sizes))}: expected whole numbers of "
                             "pixels, each at least 1")
        for name in ("weight_decay", "msgms_weight", "ssim_weight", "l2_weight"):
            if getattr(self, name) < 0:
                raise DraemError(f"--{name.replace('_', '-')} {getattr(self, name)}: must not be negative")
        if self.map_smoothing < 1 or self.map_smoothing % 2 == 0:
            raise DraemError(f"--map-smoothing {self.map_smoothing}: must be a positive odd number (the paper: 21)")

    def cells(self) -> list[int]:
        """The cell sizes as whole numbers of pixels."""
        return [int(k) for k in self.cell_sizes]


def masks_of_sets(sets: torch.Tensor, size: tuple[int, int], cell: int) -> torch.Tensor:
    """Masks (3, B, 1, H, W), 1 where copy j has the pixel removed, of cell sets (B, rows, cols) in {0, 1, 2}."""
    height, width = size
    sets = sets.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)[:, :height, :width]
    return (sets[None] == torch.arange(COPIES, device=sets.device)[:, None, None, None]).float()[:, :, None]


def _grid(size: tuple[int, int], cell: int) -> tuple[int, int]:
    """Rows and columns of cells; the last row and column are cut at the border."""
    return math.ceil(size[0] / cell), math.ceil(size[1] / cell)


def inpainting_masks(batch: int, size: tuple[int, int], cell: int, generator: torch.Generator) -> torch.Tensor:
    """Random masks (3, batch, 1, H, W) on the CPU, each image its own; they sum to 1 at every pixel.

    An image's cells of `cell` x `cell` pixels are ranked by a random permutation and the cell of rank r goes
    to set r mod 3, so the sets differ in size by at most one cell.
    """
    rows, cols = _grid(size, cell)
    ranks = torch.rand(batch, rows * cols, generator=generator).argsort(dim=1).argsort(dim=1)
    return masks_of_sets((ranks % COPIES).view(batch, rows, cols), size, cell)


def fixed_masks(size: tuple[int, int], cell: int) -> torch.Tensor:
    """The fixed test-time masks (3, 1, 1, H, W) of one cell size, shared by every image.

    Drawn like `inpainting_masks` from NumPy's generator seeded by the cell size, so that the masks are
    constants in exported graphs (ONNX) and the maps do not depend on batch size or order.
    """
    rows, cols = _grid(size, cell)
    ranks = np.random.default_rng(cell).permutation(rows * cols)
    return masks_of_sets(torch.from_numpy(ranks % COPIES).view(1, rows, cols), size, cell)


def inpaint(network: nn.Module, images: torch.Tensor, masks: torch.Tensor,
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Inpainted images (B, 3, H, W) in [0, 1] of images in [0, 1] under masks (3, B or 1, 1, H, W).

    Copy j (masked pixels 0 in [-1, 1]) fills the pixels of mask j; the three copies run in one forward pass.
    """
    count = images.shape[0]
    removed = masks.to(images.device, images.dtype).expand(-1, count, -1, -1, -1)
    copies = ((images * 2 - 1)[None] * (1 - removed)).flatten(0, 1)
    outputs = (network(copies.contiguous(memory_format=memory_format)).to(images.dtype) + 1) / 2
    return (outputs.unflatten(0, (COPIES, count)) * removed).sum(dim=0)


def riad_loss(inpainted: torch.Tensor, images: torch.Tensor, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
              ) -> dict[str, torch.Tensor]:
    """Unweighted MSGMS loss, 1 - SSIM and L2 between inpainted images and inputs, and their weighted total (fp32)."""
    inpainted, images = inpainted.float(), images.float()
    with torch.autocast(images.device.type, enabled=False):
        terms = {"msgms": msgms_loss(inpainted, images), "ssim": 1 - ssim(inpainted, images),
                 "l2": F.mse_loss(inpainted, images)}
    terms["total"] = sum(w * t for w, t in zip(weights, terms.values(), strict=True))
    return terms


@register
class RiadModel(AnomalyModel):
    """The inpainting U-Net (`unet.*`)."""

    name = "riad"
    paper = "Zavrtanik, Kristan, Skočaj: Reconstruction by inpainting for visual anomaly detection, PR 2021"
    headline = "MVTec AD image AUROC 91.7, pixel AUROC 94.2"
    Options = RiadOptions
    paper_length = PaperLength(300, "epochs")
    presets: ClassVar[dict[str, dict]] = {"full": {}, "demo": {"width": 16, "lr": 1e-3}}
    tiny_options: ClassVar[dict] = {"width": 4}
    loss_terms = ("msgms", "ssim", "l2", "total")
    uses_anomaly_sources = False
    size_multiple = 32

    def __init__(self, options: RiadOptions | None = None) -> None:
        options = options or RiadOptions()
        super().__init__(options)
        self.unet = InpaintingUNet(options.width)

    def stages(self, total_steps: int) -> list[Stage]:
        optimizer = adam(self.parameters(), lr=self.options.lr, weight_decay=self.options.weight_decay)
        return [Stage("train", 1.0, [self], {"adam": optimizer}, [])]

    def training_step(self, batch: TrainBatch, stage: Stage, update: Update) -> dict[str, torch.Tensor]:
        cells = self.options.cells()
        cell = cells[int(torch.randint(len(cells), (1,), generator=batch.generator))]
        masks = inpainting_masks(len(batch.images), batch.images.shape[-2:], cell, batch.generator)
        with batch.autocast():
            inpainted = inpaint(self.unet, batch.images, masks, batch.memory_format)
        weights = (self.options.msgms_weight, self.options.ssim_weight, self.options.l2_weight)
        terms = riad_loss(inpainted, batch.images, weights)
        update(terms["total"], stage.optimizers["adam"])
        return {name: value.detach() for name, value in terms.items()}

    def inpaint(self, images: torch.Tensor, cell: int) -> torch.Tensor:
        """The test-time inpainting of images in [0, 1] at one cell size, under its `fixed_masks`."""
        return inpaint(self.unet, images, fixed_masks(images.shape[-2:], cell))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        cells = self.options.cells()
        inpainted = [self.inpaint(images, cell) for cell in cells]
        with torch.autocast(images.device.type, enabled=False):
            maps = sum(1 - msgms_map(result, images) for result in inpainted) / len(cells)
        return mean_filter(maps, self.options.map_smoothing) if self.options.map_smoothing > 1 else maps
