"""What every method implements: options, training stages, one training step, and the anomaly map."""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from draem.errors import DraemError
from draem.scoring import IMAGE_SCORE_WINDOW, image_score


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A method option: its default, one line of help and, for strings, the allowed values."""
    factory = {"default_factory": lambda: default} if isinstance(default, list | dict) else {"default": default}
    return field(**factory, metadata={"help": help, "choices": choices})


@dataclass
class Options:
    """A method's options; subclasses add fields made with `option` and extend `validate`."""

    def validate(self) -> None:
        """Raise a one-line DraemError naming the flag of the first bad value."""
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            value, choices, flag = getattr(self, item.name), item.metadata.get("choices"), flag_of(item.name)
            if choices and value not in choices:
                raise DraemError(f"{flag} {value}: expected one of {', '.join(choices)}")
            if hints[item.name] in (int, float) and not math.isfinite(value):
                raise DraemError(f"{flag} {value}: must be a finite number")

    def at_image_size(self, image_size: int) -> Options:
        """These options for a run at `image_size` pixels, any setting that follows the size resolved (none here)."""
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Options:
        """Rebuild saved options; unknown names are refused, missing ones take their defaults."""
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DraemError(f"unknown option {flag_of(unknown[0])} for this method")
        hints = typing.get_type_hints(cls)
        return cls(**{k: tuple(v) if hints[k] is tuple[float, ...] else v for k, v in values.items()})


def flag_of(name: str) -> str:
    """The command-line flag of an option name."""
    return "--" + name.replace("_", "-")


def require_positive(**values: float) -> None:
    """One-line error for the first value below 1 (names are option names)."""
    for name, value in values.items():
        if value < 1:
            raise DraemError(f"{flag_of(name)} {value}: must be at least 1")


def require_positive_rate(**values: float) -> None:
    """One-line error for the first learning rate (or other rate) that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise DraemError(f"{flag_of(name)} {value}: must be a positive number")


@dataclass(frozen=True)
class AblationRow:
    """One row of a paper's ablation table: the run that reproduces it and the paper's figures (percent)."""

    name: str
    """Slug: the `draem ablate --rows` name and the row's run folder."""
    label: str
    """The row's name as the paper prints it."""
    method: str | None
    """The method that trains it; None where the row cannot be reproduced here (`note` says why)."""
    options: dict[str, Any]
    anomaly_source: str
    """What it simulates anomalies from: "textures" (e.g. DTD), "natural" (e.g. ImageNet) or "none"."""
    columns: str
    """The columns the paper checks for this row."""
    image_auroc: float | None
    pixel_auroc: float | None
    pixel_ap: float | None
    note: str = ""
    """How an ambiguous row was read, or why it is not run."""


@dataclass(frozen=True)
class PaperLength:
    """How long the method's paper trains, in the paper's unit: epochs (passes over the images) or steps."""

    amount: int
    unit: str = "epochs"

    def steps(self, steps_per_epoch: int) -> int:
        """The paper's length in steps of a run with `steps_per_epoch` steps per pass over its images."""
        return self.amount * steps_per_epoch if self.unit == "epochs" else self.amount

    def __str__(self) -> str:
        return f"{self.amount:,} {self.unit}"


@dataclass
class Stage:
    """One training stage: the share of the steps it runs, what it trains and with which optimisers (a stage
    without optimisers only collects, e.g. statistics or a memory bank)."""

    name: str
    fraction: float
    trainable: list[nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = field(default_factory=list)
    averaged: bool = True
    """Whether --average-weights averages what this stage's optimisers train (False: its last weights stay)."""

    @property
    def lr(self) -> float:
        """The current learning rate of the stage's first optimiser (0 for a stage without one)."""
        return next(iter(self.optimizers.values())).param_groups[0]["lr"] if self.optimizers else 0.0


def split_steps(total: int, fractions: list[float]) -> list[int]:
    """Step counts of consecutive stages: the rounded cumulative shares of `total`."""
    bounds, running = [0], 0.0
    for fraction in fractions:
        running += fraction
        bounds.append(round(running * total))
    bounds[-1] = total
    return [b - a for a, b in itertools.pairwise(bounds)]


def adam(parameters: Iterable[torch.nn.Parameter], lr: float, **settings: Any) -> torch.optim.Adam:
    """Adam with its update fused into one kernel: the same update to float rounding, and faster on CPUs."""
    return torch.optim.Adam(parameters, lr=lr, fused=True, **settings)


def multistep(optimizer: torch.optim.Optimizer, steps: int, milestones: tuple[float, ...],
              gamma: float) -> torch.optim.lr_scheduler.MultiStepLR:
    """Multiply the rate by `gamma` at each milestone, given as a fraction of the stage's steps."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [round(f * steps) for f in milestones], gamma)


@dataclass
class TrainBatch:
    """One process's batch: defect-free images in [0, 1], anomaly sources if the method uses them, the RNG,
    and the run's memory format and precision for the networks."""

    images: torch.Tensor
    sources: torch.Tensor | None
    generator: torch.Generator
    step: int
    memory_format: torch.memory_format = torch.contiguous_format
    precision: str = "fp32"

    def autocast(self) -> torch.autocast:
        """The context for network passes: bf16 autocast when the run trains in bf16; losses stay outside."""
        return torch.autocast(self.images.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


Update = Callable[[torch.Tensor, torch.optim.Optimizer], None]
"""update(loss, optimizer): backpropagate the loss, average gradients over processes, step the optimiser."""


class AnomalyModel(nn.Module):
    """A method: its networks (this module), how it trains, and how it scores images.

    Subclasses set the class attributes, take their Options in __init__, and register with
    `draem.methods.register`.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    headline: ClassVar[str]
    Options: ClassVar[type[Options]]
    paper_length: ClassVar[PaperLength]
    """How long the paper trains; a run without --max-steps, --epochs or --time-budget trains as long."""
    presets: ClassVar[dict[str, dict[str, Any]]]
    """Named option defaults ('full': the paper's networks, 'demo': the built-in demo's, and any others)."""
    tiny_options: ClassVar[dict[str, Any]] = {}
    loss_terms: ClassVar[tuple[str, ...]]
    uses_anomaly_sources: ClassVar[bool] = False
    size_multiple: ClassVar[int] = 1
    budget_rate_scale: ClassVar[float] = 4.0
    """The most the budget recipe may raise the method's learning rates for a short run."""
    float32_tolerance: ClassVar[float] = 1e-4
    """How far two float32 computations of its maps and scores may differ (PyTorch against onnxruntime)."""
    official_files: ClassVar[dict[str, str]] = {}
    report_note: ClassVar[str] = ""
    """A line the test report shows under its summary (e.g. what the paper does not report)."""
    ablation_rows: ClassVar[tuple[AblationRow, ...]] = ()

    def __init__(self, options: Options) -> None:
        super().__init__()
        self.options = options

    @classmethod
    def from_official(cls, files: dict[str, Path]) -> AnomalyModel:
        """A model holding the authors' released weights (files named as in `official_files`)."""
        raise NotImplementedError

    def loss_names(self) -> tuple[str, ...]:
        """The loss terms this configuration logs (the columns of losses.csv)."""
        return self.loss_terms

    def stages(self, total_steps: int) -> list[Stage]:
        """The training stages with fresh optimisers and schedulers for a run of `total_steps`."""
        raise NotImplementedError

    def training_step(self, batch: TrainBatch, stage: Stage, update: Update) -> dict[str, torch.Tensor]:
        """Train on one batch (calling `update` once per optimiser step); the named loss terms."""
        raise NotImplementedError

    def finish_training(self, images: Iterable[torch.Tensor]) -> None:
        """Called once after the last step, before calibration, with the training images in batches (fitted RGB
        (B, 3, H, W) in [0, 1], no simulated anomalies): where a method finishes fitting. Nothing by default."""

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel anomaly scores (B, H, W) of fitted RGB images (B, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None,
                window: int = IMAGE_SCORE_WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, H, W) and image scores (B,); the score is the windowed-mean maximum."""
        maps = self.anomaly_map(images).float()
        return maps, image_score(maps, valid, window)
