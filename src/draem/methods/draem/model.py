"""DRAEM as a method: a reconstructive and a discriminative sub-network trained on simulated anomalies.

The options also express the paper's ablations (Table 3): either sub-network alone, the anomaly source,
the mask shape, source augmentation, image rotation and the opacity of the pasted source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from draem.errors import DraemError
from draem.losses import focal_loss, msgms_loss, msgms_map, ssim, ssim_map
from draem.methods import register
from draem.methods.base import (
    AnomalyModel,
    Options,
    PaperLength,
    Stage,
    TrainBatch,
    Update,
    adam,
    multistep,
    option,
    require_positive,
    require_positive_rate,
)
from draem.methods.draem.ablation import ABLATION_ROWS
from draem.methods.draem.networks import DiscriminativeSubNetwork, ReconstructiveSubNetwork
from draem.synthesis.simulator import SimulationConfig, simulate_anomalies
from draem.synthesis.sources import solid_colours


@dataclass
class DraemOptions(Options):
    """DRAEM's networks, optimiser and anomaly simulation; the defaults are the paper's."""

    recon_width: int = option(128, "base width of the reconstructive sub-network")
    seg_width: int = option(64, "base width of the discriminative sub-network")
    lr: float = option(1e-4, "Adam learning rate of both sub-networks")
    lr_milestones: tuple[float, ...] = option((0.8, 0.9), "fractions of the steps where the rate drops")
    lr_gamma: float = option(0.2, "factor of each drop of the learning rate")
    reconstruction: bool = option(True, "train the reconstructive sub-network (off: Table 3's 'Disc.', "
                                        "the discriminative network sees the image alone)")
    discrimination: bool = option(True, "train the discriminative sub-network (off: Table 3's 'Recon.-AE', "
                                        "the anomaly map is the reconstruction error)")
    recon_loss: str = option("l2+ssim", "reconstruction loss and, without discrimination, error map "
                                        "(msgms: Table 3's 'Recon.-AE MSGMS')", ("l2+ssim", "msgms"))
    source: str = option("images", "what fills a simulated anomaly: the anomaly-source images or a uniform "
                                   "random colour (Table 3's 'color')", ("images", "colour"))
    mask_shape: str = option("perlin", "shape of simulated anomalies: Perlin-noise blobs or random "
                                       "rectangles (Table 3's 'rect')", ("perlin", "rect"))
    source_augmentation: bool = option(True, "augment anomaly sources with 3 of 10 imgaug-style operations")
    rotation_prob: float = option(0.3, "probability of rotating a training image by up to 90 degrees")
    anomaly_prob: float = option(0.5, "probability that a training image receives a simulated anomaly")
    beta: str = option("random", "opacity of the pasted source: random in [0, 0.8] or fixed (the source "
                                 "replaces the masked region)", ("random", "fixed"))

    def validate(self) -> None:
        super().validate()
        require_positive(recon_width=self.recon_width, seg_width=self.seg_width)
        require_positive_rate(lr=self.lr, lr_gamma=self.lr_gamma)
        if not (self.reconstruction or self.discrimination):
            raise DraemError("--no-reconstruction --no-discrimination: DRAEM needs at least one sub-network")
        for name, value in (("rotation-prob", self.rotation_prob), ("anomaly-prob", self.anomaly_prob)):
            if not 0 <= value <= 1:
                raise DraemError(f"--{name} {value}: must be in [0, 1]")
        if not all(0 < m < 1 for m in self.lr_milestones):
            raise DraemError(f"--lr-milestones {self.lr_milestones}: each must be in (0, 1)")

    def simulation(self) -> SimulationConfig:
        """The anomaly simulator these options ask for."""
        beta_max = 0.8 if self.beta == "random" else 0.0
        return SimulationConfig(image_rotation_prob=self.rotation_prob, anomaly_prob=self.anomaly_prob,
                                beta_max=beta_max,
                                augmenters_per_source=3 if self.source_augmentation else 0,
                                mask_shape=self.mask_shape)


def draem_loss(reconstruction: torch.Tensor | None, target: torch.Tensor, logits: torch.Tensor | None,
               mask: torch.Tensor, recon_loss: str = "l2+ssim") -> dict[str, torch.Tensor]:
    """L2 + (1 - SSIM) (or 1 - MSGMS) on the reconstruction, focal on the segmentation, and their total.

    Terms of an absent sub-network are left out; computed in the target's precision (fp32 under autocast).
    """
    terms: dict[str, torch.Tensor] = {}
    if reconstruction is not None:
        reconstruction = reconstruction.to(target.dtype)
        if recon_loss == "msgms":
            terms["msgms"] = msgms_loss(reconstruction, target)
        else:
            terms["l2"] = F.mse_loss(reconstruction, target)
            terms["ssim"] = 1 - ssim(reconstruction, target)
    if logits is not None:
        terms["focal"] = focal_loss(torch.softmax(logits.to(target.dtype), dim=1), mask)
    terms["total"] = sum(terms.values())
    return terms


@register
class DraemModel(AnomalyModel):
    """Both sub-networks under the authors' key names (`reconstructive.*`, `discriminative.*`)."""

    name = "draem"
    paper = "Zavrtanik, Kristan, Skočaj: DRAEM, ICCV 2021"
    headline = "MVTec AD image AUROC 98.0, pixel AUROC 97.3, pixel AP 68.4"
    Options = DraemOptions
    paper_length = PaperLength(700, "epochs")
    presets: ClassVar[dict[str, dict]] = {
        "full": {}, "narrow": {"recon_width": 32, "seg_width": 16},
        "demo": {"recon_width": 16, "seg_width": 16, "lr": 1e-3}}
    tiny_options: ClassVar[dict] = {"recon_width": 4, "seg_width": 4}
    loss_terms = ("l2", "ssim", "msgms", "focal", "total")
    uses_anomaly_sources = True
    size_multiple = 32
    official_files: ClassVar[dict[str, str]] = {
        "recon": "reconstructive checkpoint (DRAEM_..._.pckl)",
        "seg": "discriminative checkpoint (DRAEM_..._seg.pckl)"}
    ablation_rows = ABLATION_ROWS

    def __init__(self, options: DraemOptions | None = None) -> None:
        options = options or DraemOptions()
        super().__init__(options)
        if options.reconstruction:
            self.reconstructive = ReconstructiveSubNetwork(base_width=options.recon_width)
        if options.discrimination:
            in_channels = 6 if options.reconstruction else 3
            self.discriminative = DiscriminativeSubNetwork(in_channels, base_channels=options.seg_width)

    @classmethod
    def from_official(cls, files: dict[str, Path]) -> DraemModel:
        from draem.methods.draem.official import load_official

        return load_official(files)

    def loss_names(self) -> tuple[str, ...]:
        recon = ("msgms",) if self.options.recon_loss == "msgms" else ("l2", "ssim")
        recon = recon if self.options.reconstruction else ()
        return (*recon, *(("focal",) if self.options.discrimination else ()), "total")

    def stages(self, total_steps: int) -> list[Stage]:
        optimizer = adam(self.parameters(), lr=self.options.lr)
        scheduler = multistep(optimizer, total_steps, self.options.lr_milestones, self.options.lr_gamma)
        return [Stage("train", 1.0, [self], {"adam": optimizer}, [scheduler])]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(reconstruction, segmentation logits) of images in [0, 1]; None for an absent sub-network."""
        reconstruction = self.reconstructive(images) if self.options.reconstruction else None
        if not self.options.discrimination:
            return reconstruction, None
        seen = images if reconstruction is None else torch.cat((reconstruction, images), dim=1)
        return reconstruction, self.discriminative(seen)

    def training_step(self, batch: TrainBatch, stage: Stage, update: Update) -> dict[str, torch.Tensor]:
        sources = batch.sources
        if self.options.source == "colour":
            sources = solid_colours(len(batch.images), batch.images.shape[-1], batch.generator, batch.images.device)
        sim = simulate_anomalies(batch.images, sources, batch.generator, self.options.simulation())
        with batch.autocast():
            reconstruction, logits = self(sim.augmented.contiguous(memory_format=batch.memory_format))
        terms = draem_loss(reconstruction, sim.target, logits, sim.mask, self.options.recon_loss)
        update(terms["total"], stage.optimizers["adam"])
        return {name: value.detach() for name, value in terms.items()}

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        reconstruction, logits = self(images)
        if logits is not None:
            return torch.softmax(logits.float(), dim=1)[:, 1]
        reconstruction, images = reconstruction.float(), images.float()
        with torch.autocast(images.device.type, enabled=False):
            if self.options.recon_loss == "msgms":
                return 1 - msgms_map(reconstruction, images)
            return 1 - ssim_map(reconstruction, images).mean(dim=1)
