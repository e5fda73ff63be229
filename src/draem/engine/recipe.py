"""Training recipes: each method's own (the paper's) or one fitted to a short budget of steps or time.

The budget recipe is the same for every method and touches only what the engine sees: the stages'
optimisers (warm-up, a constant raised peak rate, and a cosine decay over the last fifth) and the image
score window, chosen on simulated defects of held-out good images. An average of the weights is an option of any run.
"""

from __future__ import annotations

import math
import re
from functools import partial

import torch
from torch import nn

from draem.errors import DraemError
from draem.methods.base import Stage

RECIPES = ("paper", "budget")
WARMUP_SHARE = 0.05
"""Share of a stage's steps over which the budget recipe ramps its rate up linearly."""
DECAY_SHARE = 0.2
"""Share of a stage's steps, at its end, over which the rate decays (the paper's DRAEM drops it at 80%)."""
FINAL_RATE_SHARE = 0.01
"""Where the cosine decay ends, as a share of the peak rate."""
AVERAGE_HORIZON_SHARE = 0.1
"""The weight average's horizon (1 / (1 - decay)) as a share of the run's steps."""
TIME_RESERVE_SHARE = 0.05
"""Share of a --time-budget kept for what follows the last step (calibration, the model file)."""
WINDOW_CANDIDATES = (1, 3, 5, 9, 15, 21, 31)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def default_recipe(max_steps: int | None, time_budget: str | None) -> str:
    """The budget recipe when the run is given a budget (--max-steps or --time-budget), else the paper's."""
    return "budget" if max_steps is not None or time_budget is not None else "paper"


def check_recipe(recipe: str) -> str:
    """A recipe name, or one line naming the choices."""
    if recipe not in RECIPES:
        raise DraemError(f"--recipe {recipe}: expected one of {', '.join(RECIPES)}")
    return recipe


def parse_duration(text: str) -> float:
    """Seconds in '45m', '2h', '90s' or '90' (seconds); one line for anything else."""
    match = _DURATION.match(text)
    if not match or float(match[1]) <= 0:
        raise DraemError(f"--time-budget {text}: expected a positive duration such as 90s, 45m or 2h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def steps_within(seconds_left: float, seconds_per_step: float) -> int:
    """How many steps fit in what is left of a time budget, keeping a reserve for calibration (at least 1)."""
    return max(int(seconds_left * (1 - TIME_RESERVE_SHARE) / seconds_per_step), 1)


def peak_rate_scale(steps: int, paper_steps: int, most: float) -> float:
    """How much the budget recipe raises the rates: the square root of how many times shorter the run is
    than the paper's, between 1 and the method's `most`."""
    return min(max(math.sqrt(paper_steps / steps), 1.0), most)


def warmup_stable_decay(step: int, steps: int) -> float:
    """The rate's share of its peak at `step` of `steps`: a linear warm-up, the peak, then a cosine decay to 1%
    over the last fifth."""
    warmup = max(round(WARMUP_SHARE * steps), 1)
    decay_start = max(round((1 - DECAY_SHARE) * steps), warmup)
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    progress = min((step - decay_start) / max(steps - decay_start, 1), 1.0)
    return FINAL_RATE_SHARE + (1 - FINAL_RATE_SHARE) * 0.5 * (1 + math.cos(math.pi * progress))


def fit_schedules(stages: list[Stage], counts: list[int], scale: float) -> None:
    """Replace each stage's schedulers by warm-up, peak and decay over its own steps, peaking at `scale` times
    the rates the method set."""
    for stage, steps in zip(stages, counts, strict=True):
        stage.schedulers = []
        for optimizer in stage.optimizers.values():
            for group in optimizer.param_groups:  # from the rate the method set, before its own scheduler's
                group["lr"] = group["initial_lr"] = scale * group.get("initial_lr", group["lr"])
            stage.schedulers.append(torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_stable_decay,
                                                                                         steps=steps)))


def averaged_names(model: nn.Module, stages: list[Stage]) -> list[str]:
    """What to average: parameters an averaged stage's optimiser holds (not requires_grad) and BatchNorm statistics."""
    trained = {id(p) for stage in stages if stage.averaged for optimizer in stage.optimizers.values()
               for group in optimizer.param_groups for p in group["params"]}
    names = [name for name, p in model.named_parameters() if id(p) in trained]
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            names += [f"{prefix}.running_mean", f"{prefix}.running_var"]
    return names


class WeightAverage:
    """An exponential moving average of a model's weights over a horizon of steps."""

    def __init__(self, model: nn.Module, stages: list[Stage], horizon: float) -> None:
        self.decay = 1 - 1 / max(horizon, 1.0)
        state = model.state_dict()
        self.values = {name: state[name].detach().clone() for name in averaged_names(model, stages)}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the model's current weights."""
        state = model.state_dict()
        for name, value in self.values.items():
            value.lerp_(state[name].to(value.dtype), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Give the model the averaged weights."""
        state = model.state_dict()
        for name, value in self.values.items():
            state[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.values

    def load_state_dict(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in self.values.items():
            value.copy_(values[name])


def window_candidates(image_size: int) -> tuple[int, ...]:
    """The score windows the budget recipe chooses from: odd sizes up to a quarter of the image side."""
    return tuple(w for w in WINDOW_CANDIDATES if w <= max(image_size // 4, 1))
