"""The settings of a training run: one TrainConfig that the CLI, `ablate`, `demo` and the API build, its
validation, resumption, and the method's options and length that follow from it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from draem import methods
from draem.data.images import FIT_MODES, RESIZE_MODES
from draem.engine.recipe import check_recipe, default_recipe, parse_duration
from draem.engine.run import RunFiles
from draem.errors import DraemError
from draem.files import output_folder
from draem.methods.base import AnomalyModel
from draem.scoring import check_window

SOURCE_COLOURS = ("color", "gray", "auto")
PATH_SETTINGS = ("data", "out", "normal", "extra_normal", "anomaly_source")


@dataclass
class TrainConfig:
    """Every setting of a training run (the method's own in `options`); saved whole into the run directory."""

    data: str | None
    out: str
    method: str = methods.DEFAULT
    options: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    """A named set of the method's option defaults ('full' when None); `options` override it."""
    category: str | None = None
    normal: str | None = None
    extra_normal: str | None = None
    """A folder of more defect-free images (e.g. reviewed good parts) added to the dataset's training images."""
    epochs: int | None = None
    """Passes over the training images; None: as long as the method's paper trains."""
    max_steps: int | None = None
    time_budget: str | None = None
    recipe: str | None = None
    """'paper' or 'budget'; None: the budget recipe when --max-steps or --time-budget is given."""
    average_weights: bool = False
    batch_size: int = 8
    image_size: int = 256
    fit: str = "resize"
    resize: str = "antialias"
    anomaly_source: str | None = None
    source_colour: str = "color"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True
    workers: int = 0
    cache_mb: int = 2048
    """Memory for decoded, resized training images and textures, so that later epochs skip reading them."""
    checkpoint_every: int = 500
    validation_fraction: float = 0.1
    sync_batchnorm: bool = False
    score_window: int | None = None
    """None: the paper's 21 under the paper recipe, chosen on simulated defects under the budget recipe."""
    resume: bool = False

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Rebuild a config saved with dataclasses.asdict (runs saved before recipes existed used the paper's)."""
        return cls(**{"recipe": "paper", **values})

    def absolute(self) -> TrainConfig:
        """The same settings with every path made absolute, as they are saved."""
        return replace(self, **{name: str(Path(getattr(self, name)).absolute())
                                for name in PATH_SETTINGS if getattr(self, name) is not None})


def paper_steps(config: TrainConfig, method: type[AnomalyModel], steps_per_epoch: int) -> int:
    """The steps of the paper's schedule for this run: --epochs when given, else the method's paper length."""
    if config.epochs is not None:
        return config.epochs * steps_per_epoch
    return method.paper_length.steps(steps_per_epoch)


def resumed_config(config: TrainConfig) -> TrainConfig:
    """With --resume, the run's saved settings win, except the run's place (--out), device, workers, cache,
    a moved dataset (--data / --normal) and a longer --max-steps."""
    files = RunFiles(Path(config.out))
    if not config.resume or not files.config.exists():
        return config
    try:
        saved = TrainConfig.from_dict(json.loads(files.config.read_text())["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DraemError(f"{files.config}: cannot read the run's saved settings ({exc})") from exc
    moved = {"data": config.data, "normal": config.normal} if config.data or config.normal else {}
    steps = {"max_steps": config.max_steps} if config.max_steps is not None else {}
    return replace(saved, out=config.out, device=config.device, workers=config.workers,
                   cache_mb=config.cache_mb, resume=True, **moved, **steps)


def check(config: TrainConfig, method: type[AnomalyModel]) -> None:
    """A one-line DraemError naming the flag of the first bad setting."""
    positive = {"--batch-size": config.batch_size, "--image-size": config.image_size,
                "--checkpoint-every": config.checkpoint_every}
    if config.epochs is not None:
        positive["--epochs"] = config.epochs
    for flag, value in positive.items():
        if value < 1:
            raise DraemError(f"{flag} {value}: must be at least 1")
    if config.score_window is not None:
        check_window(config.score_window)
    check_recipe(config.recipe or "paper")
    if config.time_budget is not None:
        parse_duration(config.time_budget)
    if config.max_steps is not None and config.max_steps < 1:
        raise DraemError(f"--max-steps {config.max_steps}: must be at least 1")
    if config.cache_mb < 0:
        raise DraemError(f"--cache-mb {config.cache_mb}: must be 0 or more")
    if config.image_size % method.size_multiple:
        raise DraemError(f"--image-size {config.image_size}: must be a multiple of {method.size_multiple} "
                         f"for method {method.name}")
    if not 0 <= config.validation_fraction < 1:
        raise DraemError(f"--validation-fraction {config.validation_fraction}: must be in [0, 1)")
    choices = {"--source-colour": (config.source_colour, SOURCE_COLOURS), "--resize": (config.resize, RESIZE_MODES),
               "--fit": (config.fit, FIT_MODES)}
    for flag, (value, allowed) in choices.items():
        if value not in allowed:
            raise DraemError(f"{flag} {value}: expected one of {', '.join(allowed)}")
    output_folder(config.out)


def prepare(config: TrainConfig) -> tuple[TrainConfig, type[AnomalyModel]]:
    """The run's settings, resumed and validated, with the method's options (preset, then flags) and recipe
    complete."""
    if config.time_budget is not None and config.max_steps is not None and not config.resume:
        raise DraemError(f"--time-budget {config.time_budget} --max-steps {config.max_steps}: give one of them")
    config = resumed_config(config).absolute()
    config = replace(config, recipe=config.recipe or default_recipe(config.max_steps, config.time_budget))
    method = methods.get(config.method)
    preset = methods.preset_options(method.name, config.preset or "full")
    options = method.Options.from_dict({**preset, **config.options}).at_image_size(config.image_size)
    options.validate()
    check(config, method)
    return replace(config, options=asdict(options)), method
