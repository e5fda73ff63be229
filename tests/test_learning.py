"""Every registered method learns: a short training on a tiny synthetic surface with large defects separates
defective from good test images well beyond chance."""

from pathlib import Path

import numpy as np
import pytest
from conftest import write_png

from draem import methods
from draem.engine.config import TrainConfig
from draem.engine.evaluate import EvaluationConfig, evaluate
from draem.engine.train import train

SIZE = 32
TRAIN_IMAGES = 24
TEST_IMAGES = 12
"""Good and defective test images each."""
MARGIN = 0.25
"""Image AUROC must reach 0.5 + MARGIN."""
STEPS = {"draem": 120, "riad": 60, "dsr": 600, "dsr-general": 60, "ocrgan": 60}
"""Training steps of batch 8 per method: what it needs here, on a CPU, at seed 0."""
SLOW = {"dsr"}
"""Methods whose steps take a test past a few seconds; they run under the `slow` marker, with the same margin."""
OPTIONS = {"draem": {"recon_width": 8, "seg_width": 8}, "riad": {"width": 8, "map_smoothing": 5},
           "dsr": {"codes": 32, "code_width": 16, "hidden_width": 16, "unet_width": 8},
           "dsr-general": {"codes": 32, "code_width": 16, "hidden_width": 16, "map_smoothing": 5},
           "ocrgan": {"width": 8, "disc_width": 8, "map_smoothing": 5}}


def stripes(rng: np.random.Generator) -> np.ndarray:
    """A grey surface of soft diagonal stripes with a random phase and mild noise (uint8, SIZE x SIZE x 3)."""
    y, x = np.mgrid[:SIZE, :SIZE]
    phase = rng.uniform(0, 2 * np.pi)
    surface = 110 + 30 * np.sin((x + y) * 0.6 + phase) + rng.normal(0, 4, (SIZE, SIZE))
    return np.repeat(surface.clip(0, 255)[:, :, None], 3, axis=2).astype(np.uint8)


def surface_with_large_defects(root: Path, seed: int = 0) -> Path:
    """Training and test images of the striped surface; defects are 10 x 10 squares of a flat odd colour."""
    rng = np.random.default_rng(seed)
    for i in range(TRAIN_IMAGES):
        write_png(root / "train" / "good" / f"{i:03d}.png", stripes(rng))
    for i in range(TEST_IMAGES):
        write_png(root / "test" / "good" / f"{i:03d}.png", stripes(rng))
        image, mask = stripes(rng), np.zeros((SIZE, SIZE), np.uint8)
        y, x = rng.integers(2, SIZE - 12, 2)
        image[y:y + 10, x:x + 10] = rng.choice([(30, 30, 30), (235, 235, 235)])
        mask[y:y + 10, x:x + 10] = 255
        write_png(root / "test" / "blot" / f"{i:03d}.png", image)
        write_png(root / "ground_truth" / "blot" / f"{i:03d}_mask.png", mask)
    return root


def marks(name: str) -> list:
    return [pytest.mark.slow] if name in SLOW else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=marks(n)) for n in methods.available()])
def test_a_short_training_beats_chance_by_the_margin(name, tmp_path):
    assert name in STEPS, f"method {name} has no step budget in this test: give it one"
    data = surface_with_large_defects(tmp_path / "surface")
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(run), method=name, options=OPTIONS[name], max_steps=STEPS[name],
                      recipe="budget", batch_size=8, image_size=SIZE, validation_fraction=0.0, seed=0,
                      precision="fp32", device="cpu", score_window=5))
    metrics = evaluate(EvaluationConfig(run=str(run), data=str(data), device="cpu", precision="fp32"))
    print("AUROC", name, metrics["overall"]["image_auroc"])
    assert metrics["overall"]["image_auroc"] >= 0.5 + MARGIN
