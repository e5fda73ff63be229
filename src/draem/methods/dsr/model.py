"""DSR as a method: a general appearance model, then object-specific modules on latent anomalies, then upsampling.

Stages (each trains its own modules; everything else is frozen, the quantisers in eval mode, so no EMA updates):
1. `general` (only without --general-model): the discrete latent model on the training images, as `dsr-general`.
2. `object`: the subspace restriction modules, the object-specific decoder and the anomaly detection module, on
   anomalies made in the quantised feature space (`latent_anomalies`).
3. `upsampling`: the upsampling module, on colour smudges; one step for every five of stage 2 (the paper's 20k : 100k).
Image score: max of the 21x21 mean-filtered anomaly channel of the detection module; map: the upsampling module's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from draem.errors import DraemError
from draem.losses import focal_loss
from draem.methods import register
from draem.methods.base import (
    AnomalyModel,
    PaperLength,
    Stage,
    TrainBatch,
    Update,
    adam,
    multistep,
    option,
    require_positive,
    require_positive_rate,
    split_steps,
)
from draem.methods.dsr.anomalies import (
    colour_smudges,
    latent_anomalies,
    latent_anomaly_masks,
    pool_mask,
    unpool_mask,
)
from draem.methods.dsr.checkpoints import latent_sizes, load_general_model, read_state_dict
from draem.methods.dsr.general import (
    GENERAL_TERMS,
    PAPER,
    VQ_FILE,
    CodeAges,
    LatentOptions,
    general_parameters,
    train_general,
)
from draem.methods.dsr.networks import UNET_WIDTH, DsrNetworks
from draem.scoring import IMAGE_SCORE_WINDOW, image_score
from draem.weights import check_state_dict

OBJECT_TERMS = ("feature_hi", "feature_lo", "object_l2", "focal")
"""Stage 2's terms: the subspace modules' feature MSEs, the object decoder's image MSE (weighted by 10 in the
total), the detection module's focal loss."""
IMAGE_WEIGHT = 10.0
OFFICIAL_MODULES = {"vq": "vq", "subspace_hi": "subspace_hi", "subspace_lo": "subspace_lo",
                    "image_recon": "object_decoder", "anomaly_det": "anomaly_detection", "upsample": "upsampling"}
"""`import-official` file name -> the module of DsrNetworks it fills."""


@dataclass
class DsrOptions(LatentOptions):
    """DSR's general model source, sizes, optimisers and latent anomalies; the defaults are the paper's."""

    general_model: str = option("", "the general appearance model to build on: a `dsr-general` run's model.pt or "
                                     "the authors' vq_model_pretrained_128_4096.pckl, with the sizes of --codes, "
                                     "--code-width and --hidden-width (read when training starts or resumes; a "
                                     "finished run holds its weights). Not given: DSR first trains it on the "
                                     "training images for --general-fraction of the steps")
    general_fraction: float = option(0.3, "share of the steps that train the general model when --general-model "
                                          "is not given (the rest: 5/6 object-specific stage, 1/6 upsampling)")
    general_channels: str = option("RGB", "channel order the general model was trained in: RGB (ours) or BGR (the "
                                          "authors' .pckl, trained on OpenCV images); the whole model then works "
                                          "in it", ("RGB", "BGR"))
    general_lr: float = option(2e-4, "Adam learning rate of the general model's own stage (constant)")
    upsampling_share: float = option(1 / 6, "share of the steps after the general model that train the upsampling "
                                            "module (the paper: 20k of 120k iterations)")
    unet_width: int = option(UNET_WIDTH, "base width of the anomaly detection and upsampling U-Nets (the authors': "
                                         "64)")
    lr: float = option(2e-4, "Adam learning rate of the object-specific stage (x0.1 at 80 % of it) and of the "
                             "upsampling stage (constant, as the authors' code runs)")
    lo_only_hi_codes: str = option("kept", "for latent anomalies on the 1/8-resolution codes alone, the 1/4 codes: "
                                           "`kept` from the clean image (the authors'), or `re-encoded` from the "
                                           "anomalous 1/8 codes so that the general decoder's image shows them",
                                   ("kept", "re-encoded"))
    strength_min: float = option(0.2, "least strength s of a latent anomaly, drawn per image from U[s_min, 1]: a "
                                      "masked feature takes one of its int(s K) + 1 nearest codes, not the "
                                      "nearest 5 %")

    def validate(self) -> None:
        super().validate()
        require_positive(unet_width=self.unet_width)
        require_positive_rate(general_lr=self.general_lr, lr=self.lr)
        if not 0 <= self.general_fraction < 1:
            raise DraemError(f"--general-fraction {self.general_fraction}: must be in [0, 1)")
        if not 0 < self.upsampling_share < 1:
            raise DraemError(f"--upsampling-share {self.upsampling_share}: must be in (0, 1)")
        if not 0 < self.strength_min <= 1:
            raise DraemError(f"--strength-min {self.strength_min}: must be in (0, 1]")


class LatentAnomalies(NamedTuple):
    """Stage 2's sample: the (possibly rotated) images, their codes, the codes with anomalies, the general
    decoder's image of those, and the anomaly target (B, 1, H, W): the replaced positions at image size."""

    images: torch.Tensor
    quantized_lo: torch.Tensor
    quantized_hi: torch.Tensor
    anomalous_lo: torch.Tensor
    anomalous_hi: torch.Tensor
    general_image: torch.Tensor
    target: torch.Tensor


def authors_init(module: nn.Module) -> None:
    """The authors' initialisation of the object decoder and the detection module: conv weights ~ N(0, 0.02)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)


def _uniform(count: int, low: float, generator: torch.Generator) -> torch.Tensor:
    return low + (1 - low) * torch.rand(count, generator=generator)


@register
class DsrModel(AnomalyModel):
    """The six networks (`networks.*`, each under the authors' keys) and the general model's code ages."""

    name = "dsr"
    paper = PAPER
    headline = "MVTec AD image AUROC 98.2; KolektorSDD2 AP_det 87.2, AP_loc 61.4"
    Options = DsrOptions
    paper_length = PaperLength(120_000, "steps")
    """The paper's 100k iterations of the object-specific stage and 20k of the upsampling module."""
    presets: ClassVar[dict[str, dict]] = {
        "full": {}, "demo": {"codes": 512, "code_width": 64, "hidden_width": 64, "unet_width": 16}}
    tiny_options: ClassVar[dict] = {"codes": 16, "code_width": 8, "hidden_width": 8, "unet_width": 8}
    loss_terms = (*GENERAL_TERMS, *OBJECT_TERMS, "upsampling_focal", "total")
    size_multiple = 32
    float32_tolerance = 1e-3
    """Its InstanceNorm U-Nets round more: float32 maps differ from float64 by up to 4e-4 at 128 px (untrained)."""
    official_files: ClassVar[dict[str, str]] = {
        "vq": VQ_FILE,
        "subspace_hi": "subspace restriction module hi (..._subspace_restriction_hi_<object>.pckl)",
        "subspace_lo": "subspace restriction module lo (..._subspace_restriction_lo_<object>.pckl)",
        "image_recon": "object-specific decoder (..._image_recon_module_<object>.pckl)",
        "anomaly_det": "anomaly detection module (..._anomaly_det_module_<object>.pckl)",
        "upsample": "upsampling module (..._upsample_module_<object>.pckl)"}

    def __init__(self, options: DsrOptions | None = None) -> None:
        options = options or DsrOptions()
        super().__init__(options)
        self.networks = DsrNetworks(replace(options.latent_config(), unet_width=options.unet_width))
        self.code_ages = CodeAges(options.codes)
        self.networks.object_decoder.apply(authors_init)
        self.networks.anomaly_detection.apply(authors_init)

    @classmethod
    def from_official(cls, files: dict[str, Path]) -> DsrModel:
        states = {name: read_state_dict(path) for name, path in files.items()}
        # The authors load image_recon with strict=False: their module once held a quantiser (`vq.*`), now unused.
        states["image_recon"] = {k: v for k, v in states["image_recon"].items() if not k.startswith("vq.")}
        codes, width, hidden = latent_sizes(states["vq"], files["vq"])
        first = states["anomaly_det"].get("unet.encoder.block1.0.weight")
        if first is None:
            raise DraemError(f"{files['anomaly_det']}: not a DSR anomaly detection module (no unet.encoder.block1)")
        model = cls(DsrOptions(codes=codes, code_width=width, hidden_width=hidden, unet_width=first.shape[0]))
        for name, attribute in OFFICIAL_MODULES.items():
            module = getattr(model.networks, attribute)
            check_state_dict(module.state_dict(), states[name], files[name], f"DSR's {attribute}")
            module.load_state_dict(states[name])
        return model.eval()

    def loss_names(self) -> tuple[str, ...]:
        return self.loss_terms if not self.options.general_model else (*OBJECT_TERMS, "upsampling_focal", "total")

    def stages(self, total_steps: int) -> list[Stage]:
        options, networks = self.options, self.networks
        if options.general_model:
            load_general_model(networks.vq, Path(options.general_model), options.general_channels)
            fractions = [1 - options.upsampling_share, options.upsampling_share]
        else:
            rest = 1 - options.general_fraction
            fractions = [options.general_fraction, rest * (1 - options.upsampling_share),
                         rest * options.upsampling_share]
        object_steps = split_steps(total_steps, fractions)[-2]
        stages = []
        if not options.general_model:
            general = adam(general_parameters(networks.vq), lr=options.general_lr)
            # Not averaged: an averaged encoder no longer matches the EMA codebooks (benchmarks/dsr_general_average.py).
            stages.append(Stage("general", fractions[0], [networks.vq], {"adam": general}, averaged=False))
        trained = [networks.subspace_hi, networks.subspace_lo, networks.object_decoder, networks.anomaly_detection]
        joint = adam(itertools.chain(*(m.parameters() for m in trained)), lr=options.lr)
        stages.append(Stage("object", fractions[-2], trained, {"adam": joint},
                            [multistep(joint, object_steps, (0.8,), 0.1)]))
        # A constant rate, as the authors' code runs: its x0.2 milestones at 80 % and 90 % of the epochs it is given
        # lie beyond the half of them that it trains.
        upsampling = adam(networks.upsampling.parameters(), lr=options.lr)
        stages.append(Stage("upsampling", fractions[-1], [networks.upsampling], {"adam": upsampling}))
        return stages

    def in_general_order(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images in the general model's channel order."""
        return images[:, [2, 1, 0]] if self.options.general_channels == "BGR" else images

    def training_step(self, batch: TrainBatch, stage: Stage, update: Update) -> dict[str, torch.Tensor]:
        images = self.in_general_order(batch.images)
        optimizer = stage.optimizers["adam"]
        if stage.name == "general":
            return train_general(self.networks.vq, self.code_ages, batch, images, optimizer, update,
                                 self.options.restart_after, self.options.restart_to)
        step = self._object_terms if stage.name == "object" else self._upsampling_terms
        terms = step(batch, images)
        update(terms["total"], optimizer)
        return {name: value.detach() for name, value in terms.items()}

    def simulate_latent(self, batch: TrainBatch, images: torch.Tensor) -> LatentAnomalies:
        """Stage 2's sample: codes of `images` (in the general model's order) with latent anomalies under masks."""
        vq, generator = self.networks.vq, batch.generator
        images, mask = latent_anomaly_masks(images, generator)
        count = len(images)
        strength_lo = _uniform(count, self.options.strength_min, generator)
        strength_hi = _uniform(count, self.options.strength_min, generator)
        both = torch.rand(count, generator=generator) < 0.5
        lo_only = ~both & (torch.rand(count, generator=generator) < 0.5)
        on_both, on_lo, on_hi_only = (flags.to(images.device, images.dtype).view(-1, 1, 1, 1)
                                      for flags in (both, both | lo_only, ~both & ~lo_only))
        with torch.no_grad(), batch.autocast():
            encoded, features_lo = vq.encode_lo(images.contiguous(memory_format=batch.memory_format))
            quantized_lo = vq.quantizer_lo(features_lo).quantized
            mask_lo = pool_mask(mask, features_lo.shape[-2:])
            anomalous_lo = latent_anomalies(features_lo, quantized_lo, vq.quantizer_lo, mask_lo * on_lo, strength_lo,
                                            generator)
            features_hi = vq.encode_hi(encoded, quantized_lo)
            quantized_hi = vq.quantizer_hi(features_hi).quantized
            mask_hi = pool_mask(mask, features_hi.shape[-2:])
            # Both levels: F_hi re-encoded from the anomalous Q_lo, then replaced; hi alone: the clean F_hi replaced.
            features_hi_both = vq.encode_hi(encoded, anomalous_lo)
            quantized_hi_both = vq.quantizer_hi(features_hi_both).quantized
            with_both = latent_anomalies(features_hi_both, quantized_hi_both, vq.quantizer_hi, mask_hi * on_both,
                                         strength_hi, generator)
            alone = latent_anomalies(features_hi, quantized_hi, vq.quantizer_hi, mask_hi * on_hi_only, strength_hi,
                                     generator)
            if self.options.lo_only_hi_codes == "re-encoded":
                alone = torch.where(on_lo > 0, quantized_hi_both, alone)
            anomalous_hi = torch.where(on_both > 0, with_both, alone)
            general_image = vq.decode(anomalous_lo, anomalous_hi)
        size = images.shape[-2:]
        target = on_lo * unpool_mask(mask_lo, size) + on_hi_only * unpool_mask(mask_hi, size)
        return LatentAnomalies(images, quantized_lo, quantized_hi, anomalous_lo, anomalous_hi, general_image, target)

    def _object_terms(self, batch: TrainBatch, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 2: restore latent anomalies to normal codes, decode them, and find them in the image."""
        sample = self.simulate_latent(batch, images)
        with batch.autocast():
            restored = self.networks.restore(sample.anomalous_lo, sample.anomalous_hi)
            logits = self.networks.anomaly_detection(restored.object_image.detach(), sample.general_image)
        terms = {"feature_hi": F.mse_loss(restored.features_hi.float(), sample.quantized_hi.float()),
                 "feature_lo": F.mse_loss(restored.features_lo.float(), sample.quantized_lo.float()),
                 "object_l2": F.mse_loss(restored.object_image.float(), sample.images.float()),
                 "focal": focal_loss(torch.softmax(logits.float(), dim=1), sample.target)}
        terms["total"] = terms["feature_hi"] + terms["feature_lo"] + IMAGE_WEIGHT * terms["object_l2"] + terms["focal"]
        return terms

    def _upsampling_terms(self, batch: TrainBatch, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 3: the upsampling module refines the detection of colour smudges."""
        smudged = colour_smudges(images, batch.generator)
        with torch.no_grad(), batch.autocast():
            object_image, general_image, logits = self.detect(
                smudged.augmented.contiguous(memory_format=batch.memory_format))
            probabilities = torch.softmax(logits.float(), dim=1)
        with batch.autocast():
            refined = self.networks.upsampling(object_image, general_image, probabilities)
        focal = focal_loss(torch.softmax(refined.float(), dim=1), smudged.mask)
        return {"upsampling_focal": focal, "total": focal}

    def detect(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(object-specific image, general image, detection logits) of images in the general model's order."""
        networks, vq = self.networks, self.networks.vq
        encoded = vq.encode(images)
        object_image = networks.restore(encoded.lo.quantized, encoded.hi.quantized).object_image
        general_image = vq.decode(encoded.lo.quantized, encoded.hi.quantized)
        return object_image, general_image, networks.anomaly_detection(object_image, general_image)

    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None,
                window: int = IMAGE_SCORE_WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
        """The upsampling module's maps; scores from the detection module's (before upsampling), as the authors."""
        object_image, general_image, logits = self.detect(self.in_general_order(images))
        probabilities = torch.softmax(logits.float(), dim=1)
        refined = self.networks.upsampling(object_image, general_image, probabilities)
        maps = torch.softmax(refined.float(), dim=1)[:, 1]
        return maps, image_score(probabilities[:, 1], valid, window)

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images)[0]
