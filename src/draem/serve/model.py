"""The model a service runs: a loaded run on its device, with a short version hash of its model file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from draem.engine.devices import resolve_device
from draem.engine.inference import Predictor
from draem.engine.run import load_model
from draem.report.overlay import ColourScale


def model_version(path: Path) -> str:
    """The first 12 hex digits of the model file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


@dataclass
class ServedModel:
    """A run's model ready to score batches, and what the service shows about it."""

    run: Path
    predictor: Predictor
    version: str

    @classmethod
    def load(cls, run: str | Path, device: str, precision: str, backend: str) -> ServedModel:
        """Load a run (DraemError when it cannot be served)."""
        loaded = load_model(run)
        model = cls(Path(run), Predictor(loaded, resolve_device(device), precision, backend),
                    model_version(loaded.path))
        model.warm_up()
        return model

    def warm_up(self) -> None:
        """One forward pass on a blank image, so that the first inspection does not pay for the first call."""
        size = self.predictor.loaded.info.image_size
        self.predictor(torch.zeros(1, 3, size, size), torch.ones(1, size, size, dtype=torch.bool))

    @property
    def thresholds(self) -> dict:
        """The run's calibrated thresholds (empty when uncalibrated)."""
        return self.predictor.loaded.info.thresholds

    @property
    def geometry(self) -> tuple[int, str, str]:
        """(image size, fit, resize): how images are fitted to the model's input."""
        info = self.predictor.loaded.info
        return info.image_size, info.fit, info.resize

    @property
    def colour_scale(self) -> ColourScale:
        """Where map values fall on the overlay's heat ramp."""
        return ColourScale.of(self.thresholds)

    def describe(self) -> dict:
        """The model as the API shows it."""
        info = self.predictor.loaded.info
        return {"run": str(self.run), "version": self.version, "method": info.method,
                "image_size": info.image_size, "device": str(self.predictor.device),
                "precision": self.predictor.precision, "backend": self.predictor.backend,
                "calibrated_threshold": self.thresholds.get("image")}
