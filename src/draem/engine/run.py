"""A run directory: its file names, the saved model format, and loading it back."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from draem import methods
from draem.errors import DraemError
from draem.files import save_torch
from draem.methods.base import AnomalyModel
from draem.scoring import IMAGE_SCORE_WINDOW
from draem.weights import FIRST_MODEL_FORMAT, MODEL_FORMAT, check_state_dict, read_torch_file


@dataclass(frozen=True)
class RunFiles:
    """Where a run keeps each of its files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def losses(self) -> Path:
        return self.root / "losses.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


@dataclass
class ModelInfo:
    """What inference needs besides the weights: the method and its options, input geometry, thresholds."""

    method: str
    options: dict[str, Any]
    image_size: int
    fit: str = "resize"
    channel_order: str = "RGB"
    score_window: int = IMAGE_SCORE_WINDOW
    resize: str = "antialias"
    thresholds: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: AnomalyModel, image_size: int, **settings: Any) -> ModelInfo:
        """The info of a built model."""
        return cls(model.name, asdict(model.options), image_size, **settings)


@dataclass
class LoadedModel:
    """A model ready for inference together with its metadata and file."""

    model: AnomalyModel
    info: ModelInfo
    path: Path


def training_folder(run_dir: Path) -> str | None:
    """The plain folder of good images a run was trained on (`--normal`), if it was."""
    try:
        return json.loads(RunFiles(run_dir).config.read_text())["train"].get("normal")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python and the packages a run depends on."""
    found = {"python": platform.python_version()}
    for name in ("draem", "torch", "numpy", "pillow", "scipy", "tqdm"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def save_model(path: Path, model: AnomalyModel, info: ModelInfo) -> None:
    """Write the inference model atomically: weights (fp32, CPU) plus metadata."""
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}
    save_torch(path, {"format": MODEL_FORMAT, "info": asdict(info), "state_dict": state})


def build_model(method: str, options: dict[str, Any], path: Path) -> AnomalyModel:
    """A fresh model of a method with saved options; a one-line error when they are not valid."""
    cls = methods.get(method)
    try:
        parsed = cls.Options.from_dict(options)
    except DraemError as exc:
        raise DraemError(f"{path}: {exc}") from exc
    except TypeError as exc:
        raise DraemError(f"{path}: options do not fit method {method} ({exc})") from exc
    return cls(parsed)


def describe(model: AnomalyModel) -> str:
    """A method and its non-default options in a few words, for error messages."""
    defaults = asdict(type(model.options)())
    changed = {k: v for k, v in asdict(model.options).items() if v != defaults[k]}
    return model.name + "".join(f" {k}={v}" for k, v in changed.items())


def model_with_weights(state_dict: dict[str, torch.Tensor], info: ModelInfo, path: Path) -> AnomalyModel:
    """The recorded method's model with these weights; a clear error when they do not fit."""
    model = build_model(info.method, info.options, path)
    check_state_dict(model.state_dict(), state_dict, path, describe(model))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _upgrade(payload: dict[str, Any]) -> dict[str, Any]:
    """A draem-model/1 file's info (DRAEM widths) in today's form."""
    info = dict(payload["info"])
    widths = {"recon_width": info.pop("recon_width"), "seg_width": info.pop("seg_width")}
    return {**info, "method": "draem", "options": widths}


def load_model(run_dir: str | Path) -> LoadedModel:
    """Load the trained model of a run directory (or a model.pt file itself) for inference."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.is_file() else RunFiles(run_dir).model
    if not path.exists() and RunFiles(run_dir).checkpoint.exists():
        raise DraemError(f"{path}: run has not finished training; continue it with "
                         f"`draem train --resume --out {run_dir} ...`")
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") not in (MODEL_FORMAT, FIRST_MODEL_FORMAT):
        raise DraemError(f"{path}: not a draem model file (expected format {MODEL_FORMAT})")
    try:
        info = ModelInfo(**(_upgrade(payload) if payload["format"] == FIRST_MODEL_FORMAT else payload["info"]))
    except (KeyError, TypeError) as exc:
        raise DraemError(f"{path}: damaged model file (its metadata does not parse: {exc})") from exc
    return LoadedModel(model_with_weights(payload["state_dict"], info, path), info, path)
