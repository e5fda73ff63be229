"""Shared fixtures: tiny MVTec-layout datasets written to temporary folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from draem import methods

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "official-draem"
MTD = SHARED / "data" / "mtd"
DTD = SHARED / "data" / "dtd-subset" / "images"


def chromium_executable() -> str:
    """The OS's Chromium; under CI a missing browser fails the test, elsewhere it skips it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI (.ci/run installs Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def write_png(path: Path, array: np.ndarray) -> Path:
    """Save a uint8 array as PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_category(root: Path, train: int = 6, good: int = 3, defects: dict[str, int] | None = None,
                  size: int = 40, seed: int = 0) -> Path:
    """A category of smooth noisy images; defects are bright squares with exact masks."""
    rng = np.random.default_rng(seed)
    defects = {"spot": 3} if defects is None else defects

    def surface() -> np.ndarray:
        base = rng.normal(120, 8, (size, size, 3)).clip(0, 255)
        return base.astype(np.uint8)

    for i in range(train):
        write_png(root / "train" / "good" / f"{i:03d}.png", surface())
    for i in range(good):
        write_png(root / "test" / "good" / f"{i:03d}.png", surface())
    for name, count in defects.items():
        for i in range(count):
            image, mask = surface(), np.zeros((size, size), np.uint8)
            y, x = rng.integers(2, size - 12, 2)
            image[y:y + 8, x:x + 8] = 250
            mask[y:y + 8, x:x + 8] = 255
            write_png(root / "test" / name / f"{i:03d}.png", image)
            write_png(root / "ground_truth" / name / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def category(tmp_path: Path) -> Path:
    """One small category folder."""
    return make_category(tmp_path / "widget")


TOY_METHOD = '''
import torch
from torch import nn

from draem.methods.base import AnomalyModel, Options, PaperLength, Stage, multistep


class TwoStages(AnomalyModel):
    """First stage trains `first` alone, the second `second` alone (with `first` frozen), like DSR."""

    name = "toy-stages"
    paper = "a test double"
    headline = "none"
    Options = Options
    paper_length = PaperLength(700, "epochs")
    presets = {"full": {}, "demo": {}}
    loss_terms = ("first", "second", "total")

    def __init__(self, options=None):
        super().__init__(options or Options())
        self.first = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.second = nn.Conv2d(4, 3, 3, padding=1)

    def stages(self, total_steps):
        one = torch.optim.Adam(self.first.parameters(), lr=1e-2)
        two = torch.optim.Adam(self.second.parameters(), lr=1e-2)
        return [Stage("first", 0.5, [self.first], {"adam": one}),
                Stage("second", 0.5, [self.second], {"adam": two}, [multistep(two, 3, (0.5,), 0.1)])]

    def training_step(self, batch, stage, update):
        noise = torch.randn(batch.images.shape, generator=batch.generator) * 0.1
        features = self.first(batch.images + noise)
        if stage.name == "first":
            loss = features.square().mean()
            update(loss, stage.optimizers["adam"])
            return {"first": loss.detach(), "total": loss.detach()}
        loss = (self.second(features) - batch.images).square().mean()
        update(loss, stage.optimizers["adam"])
        return {"second": loss.detach(), "total": loss.detach()}

    def anomaly_map(self, images):
        return (self.second(self.first(images)) - images).abs().mean(dim=1)
'''


@pytest.fixture
def toy(monkeypatch):
    namespace: dict = {}
    exec(compile(TOY_METHOD, "toy_method", "exec"), namespace)
    monkeypatch.setitem(methods._REGISTRY, "toy-stages", namespace["TwoStages"])
    return namespace["TwoStages"]
