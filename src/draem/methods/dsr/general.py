"""DSR's first stage as a method of its own: the general appearance (discrete latent) model, trained on any images.

The paper trains it on ImageNet. `draem train --method dsr-general --normal FOLDER` trains it on a local folder of
images instead (the DTD subset, a category's training images, a user's natural images); the run's model.pt is the
file that `draem train --method dsr --general-model` reuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from draem.errors import DraemError
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
from draem.methods.dsr.checkpoints import latent_sizes, read_state_dict
from draem.methods.dsr.networks import DiscreteLatentModel, DsrConfig, Encoded
from draem.scoring import mean_filter
from draem.weights import check_state_dict

PAPER = ("Zavrtanik, Kristan, Skočaj: DSR, a dual subspace re-projection network for surface anomaly detection, "
         "ECCV 2022")
RESTART_MODES = ("far", "random")
GENERAL_TERMS = ("general_l2", "commitment", "perplexity_lo", "perplexity_hi")
"""Stage 1's logged terms: image MSE, both quantisers' commitment losses, and each codebook's perplexity (the
effective number of codes used in the batch, a diagnostic)."""
VQ_FILE = "the authors' general appearance model (vq_model_pretrained_128_4096.pckl)"


@dataclass
class LatentOptions(Options):
    """The discrete latent model's sizes and its dead-code restarts; the defaults are the paper's sizes."""

    codes: int = option(4096, "codes in each of the two codebooks, K_lo and K_hi (the paper: 4096)")
    code_width: int = option(128, "width of each code (the paper: 128)")
    hidden_width: int = option(128, "channels of the encoders and the general decoder (their residual blocks: half)")
    restart_after: int = option(100, "a code unused for this many training steps of the general model is reset to "
                                     "an encoder output of the current batch, drawn as --restart-to says from the "
                                     "step's seeded generator (so resumed runs repeat it); 0: never")
    restart_to: str = option("far", "where a dead code restarts: `far`, at an encoder output of the batch drawn "
                                    "with probability proportional to its squared distance from the nearest live "
                                    "code, so new codes cover what the codebook represents worst; `random`, at one "
                                    "drawn uniformly", RESTART_MODES)

    def validate(self) -> None:
        super().validate()
        require_positive(code_width=self.code_width)
        if self.codes < 2:
            raise DraemError(f"--codes {self.codes}: must be at least 2")
        if self.hidden_width < 2 or self.hidden_width % 2:
            raise DraemError(f"--hidden-width {self.hidden_width}: must be an even number, at least 2")
        if self.restart_after < 0:
            raise DraemError(f"--restart-after {self.restart_after}: must not be negative (0: never)")

    def latent_config(self) -> DsrConfig:
        """The networks' sizes (two residual layers of half the hidden width, as in the paper's 128 / 64)."""
        return DsrConfig(num_hiddens=self.hidden_width, num_residual_hiddens=self.hidden_width // 2,
                         num_embeddings=self.codes, embedding_dim=self.code_width)


@dataclass
class DsrGeneralOptions(LatentOptions):
    """The general model's sizes, optimiser and the smoothing of its reconstruction-error map."""

    lr: float = option(2e-4, "Adam learning rate (constant; the paper's)")
    map_smoothing: int = option(21, "side of the mean filter applied to the reconstruction-error map (1: none)")

    def validate(self) -> None:
        super().validate()
        require_positive_rate(lr=self.lr)
        if self.map_smoothing < 1 or self.map_smoothing % 2 == 0:
            raise DraemError(f"--map-smoothing {self.map_smoothing}: must be a positive odd number")


class CodeAges(nn.Module):
    """Training steps since each code of K_lo (`lo`) and K_hi (`hi`) was last chosen, to restart dead codes."""

    def __init__(self, codes: int) -> None:
        super().__init__()
        self.register_buffer("lo", torch.zeros(codes, dtype=torch.long))
        self.register_buffer("hi", torch.zeros(codes, dtype=torch.long))

    @torch.no_grad()
    def restart_dead(self, vq: DiscreteLatentModel, encoded: Encoded, after: int, generator: torch.Generator,
                     to: str = "far") -> None:
        """Age the codes by one step of a training-mode encoding (its counts cover every process) and restart
        those unused for `after` steps at encoder outputs of the batch picked as `to` says."""
        levels = ((self.lo, vq.quantizer_lo, encoded.features_lo, encoded.lo.counts),
                  (self.hi, vq.quantizer_hi, encoded.features_hi, encoded.hi.counts))
        for ages, quantizer, features, counts in levels:
            ages.add_(1).masked_fill_(counts > 0, 0)
            dead = (ages >= after).nonzero().flatten()
            if len(dead):
                flat = features.detach().float().permute(0, 2, 3, 1).reshape(-1, features.shape[1])
                live = (ages < after).nonzero().flatten()
                quantizer.restart(dead, flat[restart_picks(flat, quantizer.codebook[live], len(dead), generator, to)])
                ages[dead] = 0


def restart_picks(features: torch.Tensor, live_codes: torch.Tensor, count: int, generator: torch.Generator,
                  to: str) -> torch.Tensor:
    """Indices of `count` rows of features (N, D) to restart dead codes at: uniform draws (`random`), or draws
    without replacement weighted by the squared distance to the nearest live code (`far`, as k-means++ seeds)."""
    if to == "random" or not len(live_codes):
        return torch.randint(len(features), (count,), generator=generator).to(features.device)
    nearest = torch.cdist(features, live_codes.float()).amin(dim=1).square()
    weights = nearest.cpu() + 1e-12
    return torch.multinomial(weights, count, replacement=count > len(features), generator=generator).to(features.device)


def general_parameters(vq: DiscreteLatentModel) -> list[nn.Parameter]:
    """The parameters Adam trains: all but the codebooks and their EMA sums, which follow the encoder outputs."""
    return [p for name, p in vq.named_parameters() if not name.endswith(("_embedding.weight", "_ema_w"))]


def train_general(vq: DiscreteLatentModel, ages: CodeAges, batch: TrainBatch, images: torch.Tensor,
                  optimizer: torch.optim.Optimizer, update: Update, restart_after: int,
                  restart_to: str = "far") -> dict[str, torch.Tensor]:
    """One step of the general model on images in [0, 1]: image MSE plus both commitment losses; then restarts."""
    with batch.autocast():
        encoded = vq.encode(images.contiguous(memory_format=batch.memory_format))
        reconstruction = vq.decode(encoded.lo.quantized, encoded.hi.quantized)
    terms = {"general_l2": F.mse_loss(reconstruction.float(), images.float()),
             "commitment": encoded.lo.loss.float() + encoded.hi.loss.float()}
    total = terms["general_l2"] + terms["commitment"]
    update(total, optimizer)
    if restart_after:
        ages.restart_dead(vq, encoded, restart_after, batch.generator, restart_to)
    terms |= {"perplexity_lo": encoded.lo.perplexity, "perplexity_hi": encoded.hi.perplexity, "total": total}
    return {name: value.detach().float() for name, value in terms.items()}


@register
class DsrGeneralModel(AnomalyModel):
    """The discrete latent model (`vq.*`, the authors' keys) and its code ages; scores by reconstruction error."""

    name = "dsr-general"
    paper = PAPER
    headline = "DSR's general appearance model alone (stage 1), reused by `dsr --general-model`; no figures of its own"
    Options = DsrGeneralOptions
    paper_length = PaperLength(200_000, "steps")
    """The paper's 200k iterations on ImageNet (batch 32)."""
    presets: ClassVar[dict[str, dict]] = {"full": {}, "demo": {"codes": 512, "code_width": 64, "hidden_width": 64}}
    tiny_options: ClassVar[dict] = {"codes": 16, "code_width": 8, "hidden_width": 8}
    loss_terms = (*GENERAL_TERMS, "total")
    size_multiple = 8
    official_files: ClassVar[dict[str, str]] = {"vq": VQ_FILE}

    def __init__(self, options: DsrGeneralOptions | None = None) -> None:
        options = options or DsrGeneralOptions()
        super().__init__(options)
        self.vq = DiscreteLatentModel.from_config(options.latent_config())
        self.code_ages = CodeAges(options.codes)

    @classmethod
    def from_official(cls, files: dict[str, Path]) -> DsrGeneralModel:
        state = read_state_dict(files["vq"])
        codes, width, hidden = latent_sizes(state, files["vq"])
        model = cls(DsrGeneralOptions(codes=codes, code_width=width, hidden_width=hidden))
        check_state_dict(model.vq.state_dict(), state, files["vq"], "DSR's general appearance model")
        model.vq.load_state_dict(state)
        return model.eval()

    def stages(self, total_steps: int) -> list[Stage]:
        optimizer = adam(general_parameters(self.vq), lr=self.options.lr)
        return [Stage("general", 1.0, [self.vq], {"adam": optimizer}, averaged=False)]  # see DsrModel.stages

    def training_step(self, batch: TrainBatch, stage: Stage, update: Update) -> dict[str, torch.Tensor]:
        return train_general(self.vq, self.code_ages, batch, batch.images, stage.optimizers["adam"], update,
                             self.options.restart_after, self.options.restart_to)

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        reconstruction = self.vq(images).image.float()
        error = (reconstruction - images.float()).square().mean(dim=1)
        smoothing = self.options.map_smoothing
        return mean_filter(error, smoothing) if smoothing > 1 else error
