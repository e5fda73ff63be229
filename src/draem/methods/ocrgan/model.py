"""OCR-GAN as a method: two U-Nets reconstruct an image's low and high frequency bands, joined by channel selection,
against a discriminator that also sees forged abnormal samples.

The image is split into a low and a high band (one Laplacian-pyramid level); each band's U-Net reconstructs
it and the reconstruction is the sum. The generator learns adversarially (BCE), by L1 reconstruction and by
matching the discriminator's features of the image; the discriminator tells images from reconstructions and,
by default, from forged samples (CutPaste and Cutout), and also minimises that feature L2 (the authors' err_d =
real + fake + latent + forged, which the re-initialisation threshold watches). The default depth is the authors'
log2 of the image size (8 at 256 px); the `compact` preset has 5 levels. Image score: 0.9 x the mean squared
reconstruction error + 0.1 x the mean squared difference of the discriminator's features, both on the networks'
[-1, 1] scale as the authors score; anomaly map: the per-pixel squared error, smoothed.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from draem.errors import DraemError
from draem.methods import processes, register
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
from draem.methods.ocrgan.ablation import ABLATION_ROWS
from draem.methods.ocrgan.forgery import forge
from draem.methods.ocrgan.frequency import band_inputs, recompose
from draem.methods.ocrgan.networks import Discriminator, FrequencyGenerator, init_weights
from draem.scoring import IMAGE_SCORE_WINDOW, mean_filter

log = logging.getLogger("draem")

PAPER = ("Liang, Zhang, Zhao, Wu, Liu, Pan: Omni-frequency Channel-selection Representations for Unsupervised "
         "Anomaly Detection, IEEE TIP 2023")
BRANCHES = {"both": ("low", "high"), "low": ("low",), "high": ("high",)}
"""The bands each --bands value reconstructs, one U-Net each."""
MIN_DEPTH, MAX_DEPTH = 3, 10
PAPER_IMAGE_SIZE = 256
"""The authors' image size on MVTec AD: the depth of a model built without a run's image size is the one for it."""
COMPACT_DEPTH = 5
"""The `compact` and `demo` presets' depth (this toolkit's default before issue 32)."""


def deepest(image_size: int) -> int:
    """The most halvings an image side allows (log2 of it for a power of two), within MIN_DEPTH and MAX_DEPTH."""
    depth = MIN_DEPTH
    while depth < MAX_DEPTH and image_size % 2 ** (depth + 1) == 0:
        depth += 1
    return depth


@dataclass
class OcrGanOptions(Options):
    """OCR-GAN's networks, branches, losses, optimiser, forged samples and scores; defaults from the paper and the
    authors' code."""

    width: int = option(64, "base width of each band's U-Net (widths w, 2w, 4w, then 8w)")
    depth: int = option(0, "halvings in each U-Net; 0: the deepest the image size allows, as the authors' log2 of "
                           "it (8 at 256 px: 1x1 at the bottleneck and in the discriminator); the image size must "
                           "be a multiple of 2**depth (the compact preset: 5)")
    disc_width: int = option(64, "base width of the discriminator (it halves the image depth - 2 times, doubling "
                                    "its width after the first)")
    bands: str = option("both", "frequency branches: both, or one alone (Table VI's ablation)", tuple(BRANCHES))
    channel_selection: bool = option(True, "select channels across the two branches at every encoder level "
                                           "(off: Table VI's 'two branches'; needs --bands both)")
    forged_samples: bool = option(True, "train the discriminator on forged abnormal samples (CutPaste and Cutout) "
                                        "too (off: the paper's 96.9 setting)")
    cutout: int = option(20, "side in pixels of a forged sample's Cutout hole")
    lr: float = option(2e-4, "Adam learning rate of both players (constant)")
    beta1: float = option(0.5, "Adam beta1 of both players (beta2 0.999)")
    adversarial_weight: float = option(1.0, "weight of the generator's adversarial loss")
    reconstruction_weight: float = option(50.0, "weight of the L1 reconstruction loss")
    feature_weight: float = option(1.0, "weight of the L2 loss between the discriminator's features of the image "
                                        "and of its reconstruction")
    reinit_below: float = option(1e-5, "re-initialise the discriminator when its loss falls below this (0: never)")
    score_weight: float = option(0.9, "share of the reconstruction error in the image score; the rest is the "
                                      "discriminator-feature error")
    map_smoothing: int = option(21, "side of the mean filter applied to the anomaly map (1: none)")

    def validate(self) -> None:
        super().validate()
        require_positive(width=self.width, disc_width=self.disc_width, cutout=self.cutout)
        require_positive_rate(lr=self.lr)
        if self.depth and not MIN_DEPTH <= self.depth <= MAX_DEPTH:
            raise DraemError(f"--depth {self.depth}: must be 0 (the deepest) or between {MIN_DEPTH} and {MAX_DEPTH}")
        if not 0 <= self.beta1 < 1:
            raise DraemError(f"--beta1 {self.beta1}: must be in [0, 1)")
        for name in ("adversarial_weight", "reconstruction_weight", "feature_weight", "reinit_below"):
            if getattr(self, name) < 0:
                raise DraemError(f"--{name.replace('_', '-')} {getattr(self, name)}: must not be negative")
        if not 0 <= self.score_weight <= 1:
            raise DraemError(f"--score-weight {self.score_weight}: must be in [0, 1]")
        if self.map_smoothing < 1 or self.map_smoothing % 2 == 0:
            raise DraemError(f"--map-smoothing {self.map_smoothing}: must be a positive odd number")
        if self.channel_selection and self.bands != "both":
            raise DraemError(f"--bands {self.bands}: channel selection weighs two branches; add "
                             "--no-channel-selection")

    def at_image_size(self, image_size: int) -> OcrGanOptions:
        """With --depth 0 resolved to the deepest the image size allows."""
        return self if self.depth else replace(self, depth=deepest(image_size))


def network_scale(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] on the networks' [-1, 1] scale."""
    return images * 2 - 1


def squared_errors(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error (B, H, W) on the [-1, 1] scale, averaged over the channels."""
    return ((network_scale(reconstruction) - network_scale(images)) ** 2).mean(dim=1)


def ocrgan_score(errors: torch.Tensor, valid: torch.Tensor, real_features: torch.Tensor,
                 fake_features: torch.Tensor, weight: float = 0.9) -> torch.Tensor:
    """Image scores (B,): `weight` x the mean of the squared errors (B, H, W) over the valid pixels + (1 - weight)
    x the mean squared difference of the discriminator's features (B, F)."""
    inside = valid.to(errors.dtype)
    reconstruction = (errors * inside).sum(dim=(1, 2)) / inside.sum(dim=(1, 2)).clamp(min=1)
    features = ((real_features - fake_features) ** 2).mean(dim=1)
    return weight * reconstruction + (1 - weight) * features


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy of the sigmoid of the logits against the label real (1) or fake (0)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


def generator_loss(fake_logits: torch.Tensor, fake_features: torch.Tensor, real_features: torch.Tensor,
                   reconstruction: torch.Tensor, images: torch.Tensor,
                   weights: tuple[float, float, float] = (1.0, 50.0, 1.0)) -> dict[str, torch.Tensor]:
    """Unweighted adversarial BCE (reconstructions labelled real), L1 on the [-1, 1] scale and L2 between the
    discriminator's features of reconstruction and image, and their weighted sum `generator`."""
    terms = {"adversarial": _bce(fake_logits, True),
             "reconstruction": F.l1_loss(network_scale(reconstruction), network_scale(images)),
             "features": F.mse_loss(fake_features, real_features)}
    terms["generator"] = sum(w * t for w, t in zip(weights, terms.values(), strict=True))
    return terms


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_features: torch.Tensor,
                       fake_features: torch.Tensor, forged_logits: torch.Tensor | None = None,
                       latent_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """BCE of images as real, of reconstructions and (if given) forged samples as fake, the unweighted L2 between the
    features of images and reconstructions (`d_latent`, as the authors' err_d), and their weighted sum."""
    terms = {"d_real": _bce(real_logits, True), "d_reconstructed": _bce(fake_logits, False),
             "d_latent": F.mse_loss(fake_features, real_features)}
    if forged_logits is not None:
        terms["d_forged"] = _bce(forged_logits, False)
    terms["discriminator"] = sum(latent_weight * t if name == "d_latent" else t for name, t in terms.items())
    return terms


@register
class OcrGanModel(AnomalyModel):
    """The band U-Nets with their channel selection (`generator.*`) and the discriminator (`discriminator.*`)."""

    name = "ocrgan"
    paper = PAPER
    headline = "MVTec AD image AUROC 98.3 (96.9 without forged samples)"
    Options = OcrGanOptions
    paper_length = PaperLength(200, "epochs")
    """The authors' README trains 200 epochs (`--niter 200`, batch 32)."""
    presets: ClassVar[dict[str, dict]] = {
        "full": {}, "compact": {"depth": COMPACT_DEPTH},
        "demo": {"width": 16, "disc_width": 16, "depth": COMPACT_DEPTH}}
    """full: the authors' networks at the run's image size; compact: 5 levels (at 256 px a 29x29 discriminator map,
    about 34M / 1M parameters against 111M / 48M) for demos and short budgets."""
    tiny_options: ClassVar[dict] = {"width": 4, "disc_width": 4, "depth": COMPACT_DEPTH}
    loss_terms = ("adversarial", "reconstruction", "features", "generator", "d_real", "d_reconstructed", "d_latent",
                  "d_forged", "discriminator", "total")
    size_multiple = 2**COMPACT_DEPTH
    """So that every preset fits (--depth 0 takes at least 5 here); other depths are checked on the first pass."""
    report_note = ("The OCR-GAN paper reports image-level results only: the pixel metrics and maps here are this "
                   "toolkit's own (the per-pixel reconstruction error, smoothed).")
    ablation_rows = ABLATION_ROWS

    def __init__(self, options: OcrGanOptions | None = None) -> None:
        options = (options or OcrGanOptions()).at_image_size(PAPER_IMAGE_SIZE)
        super().__init__(options)
        self.bands = BRANCHES[options.bands]
        self.generator = FrequencyGenerator(self.bands, options.width, options.depth, options.channel_selection)
        self.discriminator = Discriminator(options.disc_width, options.depth - 3)

    def loss_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.loss_terms if n != "d_forged" or self.options.forged_samples)

    def stages(self, total_steps: int) -> list[Stage]:
        optimizers = {name: adam(module.parameters(), lr=self.options.lr, betas=(self.options.beta1, 0.999))
                      for name, module in (("generator", self.generator), ("discriminator", self.discriminator))}
        return [Stage("train", 1.0, [self], optimizers)]

    def reconstruct(self, images: torch.Tensor,
                    memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """The reconstruction (B, 3, H, W) in image space, in the images' dtype, of images in [0, 1]: the bands are
        split and summed outside autocast."""
        multiple = 2**self.options.depth
        if images.shape[-2] % multiple or images.shape[-1] % multiple:
            raise DraemError(f"--image-size {images.shape[-1]}: --depth {self.options.depth} needs a multiple of "
                             f"{multiple} pixels")
        with torch.autocast(images.device.type, enabled=False):
            inputs = band_inputs(images, self.bands)
        outputs = self.generator([x.contiguous(memory_format=memory_format) for x in inputs])
        with torch.autocast(images.device.type, enabled=False):
            return recompose([output.to(images.dtype) for output in outputs], self.bands)

    def discriminate(self, images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminator's (logits (B,), features (B, F)), in the images' dtype, of images in [0, 1]."""
        logits, features = self.discriminator(network_scale(images).contiguous(memory_format=memory_format))
        return logits.to(images.dtype), features.to(images.dtype)

    def training_step(self, batch: TrainBatch, stage: Stage, update: Update) -> dict[str, torch.Tensor]:
        images, memory_format, options = batch.images, batch.memory_format, self.options
        forged = forge(images, batch.generator, options.cutout) if options.forged_samples else None
        with batch.autocast():
            reconstruction = self.reconstruct(images, memory_format)
            real_logits, real_features = self.discriminate(images, memory_format)
            fake_logits, fake_features = self.discriminate(reconstruction, memory_format)
        weights = (options.adversarial_weight, options.reconstruction_weight, options.feature_weight)
        terms = generator_loss(fake_logits, fake_features, real_features.detach(), reconstruction, images, weights)
        update(terms["generator"], stage.optimizers["generator"])
        with batch.autocast():
            reconstructed_logits, reconstructed_features = self.discriminate(reconstruction.detach(), memory_format)
            forged_logits = None if forged is None else self.discriminate(forged.images, memory_format)[0]
        terms |= discriminator_loss(real_logits, reconstructed_logits, real_features, reconstructed_features,
                                    forged_logits, options.feature_weight)
        update(terms["discriminator"], stage.optimizers["discriminator"])
        self.reinitialise_collapsed_discriminator(terms["discriminator"], batch.generator)
        terms["total"] = terms["generator"] + terms["discriminator"]
        return {name: value.detach() for name, value in terms.items()}

    def reinitialise_collapsed_discriminator(self, loss: torch.Tensor, generator: torch.Generator) -> bool:
        """Re-draw the discriminator's weights from `generator` when its loss, averaged over the processes, is below
        --reinit-below (as the authors); every process takes the first process's draw. True when it did."""
        mean = processes.sum_over_processes(loss.detach().float().clone()) / processes.process_count()
        if not float(mean) < self.options.reinit_below:
            return False
        self.discriminator.apply(functools.partial(init_weights, generator=generator))
        processes.share_first_process(*self.discriminator.parameters(), *self.discriminator.buffers())
        log.info("discriminator loss %.2g below %g: discriminator re-initialised", float(mean),
                 self.options.reinit_below)
        return True

    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None,
                window: int = IMAGE_SCORE_WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps: the squared error, smoothed; scores: `ocrgan_score` over the valid pixels, the discriminator seeing
        the image itself where it is padding (`window` does not apply)."""
        reconstruction = self.reconstruct(images)
        errors = squared_errors(reconstruction, images)
        inside = torch.ones_like(errors, dtype=torch.bool) if valid is None else valid
        real_features = self.discriminate(images)[1]
        fake_features = self.discriminate(torch.where(inside[:, None], reconstruction, images))[1]
        scores = ocrgan_score(errors, inside, real_features, fake_features, self.options.score_weight)
        smoothing = self.options.map_smoothing
        return (mean_filter(errors, smoothing) if smoothing > 1 else errors), scores

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images)[0]
