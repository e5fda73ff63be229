"""The Python API: the same jobs as the command line, plus in-memory prediction."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from draem import methods
from draem.data.images import fit_to_square, read_image, valid_region
from draem.engine.config import TrainConfig
from draem.engine.devices import resolve_device
from draem.engine.evaluate import EvaluationConfig, evaluate
from draem.engine.inference import Predictor
from draem.engine.predict import results_for_batch
from draem.engine.run import load_model
from draem.engine.train import train

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


@dataclass
class Prediction:
    """One image's result: raw and normalised score, decision, map and defect mask (original size)."""

    score: float
    normalized_score: float | None
    is_defective: bool | None
    anomaly_map: np.ndarray
    mask: np.ndarray | None

    @property
    def decision(self) -> str | None:
        return None if self.is_defective is None else ("defective" if self.is_defective else "good")


def _as_tensor(image: ImageInput) -> torch.Tensor:
    """Any supported image input -> float RGB tensor (3, H, W) in [0, 1]."""
    if isinstance(image, str | Path):
        return read_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(array[:, :, :3].transpose(2, 0, 1)))
    if image.dim() == 2:
        image = image[None].expand(3, -1, -1)
    return image.float()


class Detector:
    """A trained run of any method, ready to predict; `Detector.train` and `.test` run the CLI's jobs."""

    def __init__(self, run_dir: str | Path, device: str = "auto", precision: str = "auto") -> None:
        self.run_dir = Path(run_dir)
        self.predictor = Predictor(load_model(run_dir), resolve_device(device), precision)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", precision: str = "auto") -> Detector:
        """Load the model of a run directory."""
        return cls(run_dir, device, precision)

    @classmethod
    def train(cls, data: str | Path, out: str | Path, method: str = methods.DEFAULT, **options: object) -> Detector:
        """Train like `draem train`: options are TrainConfig fields (e.g. preset, max_steps) or the method's own;
        load the result."""
        engine = {f.name for f in fields(TrainConfig)}
        own = {k: v for k, v in options.items() if k not in engine}
        common = {k: v for k, v in options.items() if k in engine}
        train(TrainConfig(data=str(data), out=str(out), method=method, options=own, **common))
        return cls(out)

    def test(self, data: str | Path, **options: object) -> dict:
        """Evaluate like `draem test` (options as EvaluationConfig fields); returns the metrics."""
        return evaluate(EvaluationConfig(run=str(self.run_dir), data=str(data), **options))

    @property
    def thresholds(self) -> dict:
        return self.predictor.loaded.info.thresholds

    def predict(self, image: ImageInput) -> Prediction:
        """Score one image (path, PIL image, HxW(x3) array or (3, H, W) tensor in [0, 1])."""
        original = _as_tensor(image)
        info = self.predictor.loaded.info
        fitted, where = fit_to_square(original, info.image_size, info.fit, info.resize)
        valid = valid_region(where, info.image_size)[None]
        result = results_for_batch(self.predictor, fitted[None], valid, [where])[0]
        return Prediction(result.score, result.normalized_score, result.defective,
                          result.anomaly_map.numpy(),
                          None if result.mask is None else result.mask.numpy())


class Draem(Detector):
    """The earlier name of `Detector`, kept for one release."""

    def __init__(self, run_dir: str | Path, device: str = "auto", precision: str = "auto") -> None:
        warnings.warn("draem.Draem is deprecated and will be removed in the next release; use draem.Detector",
                      DeprecationWarning, stacklevel=3)
        super().__init__(run_dir, device, precision)
