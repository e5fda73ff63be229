"""A run directory: its file names, the saved model format, and loading it back."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from draem.errors import DraemError
from draem.files import save_torch
from draem.models import DraemModel
from draem.models.draem import IMAGE_SCORE_WINDOW

MODEL_FORMAT = "draem-model/1"


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
    """What inference needs besides the weights: widths, input geometry, channel order, thresholds."""

    recon_width: int
    seg_width: int
    image_size: int
    fit: str = "resize"
    channel_order: str = "RGB"
    score_window: int = IMAGE_SCORE_WINDOW
    thresholds: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A model ready for inference together with its metadata and file."""

    model: DraemModel
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


def save_model(path: Path, model: DraemModel, info: ModelInfo) -> None:
    """Write the inference model atomically: weights (fp32, CPU) plus metadata."""
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}
    save_torch(path, {"format": MODEL_FORMAT, "info": vars(info), "state_dict": state})


def check_state_dict(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path,
                     widths: str) -> None:
    """Raise a one-line DraemError when `state` does not have exactly the expected keys and shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        first = missing[0] if missing else unexpected[0]
        kind = "missing" if missing else "unexpected"
        raise DraemError(f"{path}: not a DRAEM checkpoint of this architecture "
                         f"({len(missing)} missing, {len(unexpected)} unexpected keys; {kind}: {first})")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise DraemError(f"{path}: weight {key} has shape {tuple(state[key].shape)}, "
                             f"expected {tuple(value.shape)} for widths {widths}")


def build_model(state_dict: dict[str, torch.Tensor], info: ModelInfo, path: Path) -> DraemModel:
    """A DraemModel of the recorded widths with these weights; a clear error when they do not fit."""
    model = DraemModel(info.recon_width, info.seg_width)
    check_state_dict(model.state_dict(), state_dict, path, f"{info.recon_width}/{info.seg_width}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def read_torch_file(path: Path) -> Any:
    """torch.load with a one-line error for missing, truncated or foreign files."""
    if not path.is_file():
        raise DraemError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().split("\n")[0][:160] or type(exc).__name__
        raise DraemError(f"{path}: cannot read checkpoint ({reason})") from exc


def load_model(run_dir: str | Path) -> LoadedModel:
    """Load the trained model of a run directory (or a model.pt file itself) for inference."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.is_file() else RunFiles(run_dir).model
    if not path.exists() and RunFiles(run_dir).checkpoint.exists():
        raise DraemError(f"{path}: run has not finished training; continue it with "
                         f"`draem train --resume --out {run_dir} ...`")
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise DraemError(f"{path}: not a draem model file (expected format {MODEL_FORMAT})")
    info = ModelInfo(**payload["info"])
    return LoadedModel(build_model(payload["state_dict"], info, path), info, path)
