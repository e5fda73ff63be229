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
SIZES = {"dsr": 64}
"""Image sides other than SIZE: DSR's latent anomalies live at 1/4 and 1/8 of the image and need room."""
TRAIN_IMAGES = 24
TEST_IMAGES = 12
"""Good and defective test images each."""
MARGIN = 0.25
"""Image AUROC must reach 0.5 + MARGIN."""
STEPS = {"draem": 120, "riad": 60, "dsr": 800, "dsr-general": 60, "ocrgan": 60}
"""Training steps of batch 8 per method: what it needs here, on a CPU, at seed 0."""
SLOW = {"dsr"}
"""Methods whose steps take a test past a few seconds; they run under the `slow` marker, with the same margin."""
OPTIONS = {"draem": {"recon_width": 8, "seg_width": 8}, "riad": {"width": 8, "map_smoothing": 5},
           "dsr": {"codes": 128, "code_width": 32, "hidden_width": 32, "unet_width": 16},
           "dsr-general": {"codes": 32, "code_width": 16, "hidden_width": 16, "map_smoothing": 5},
           "ocrgan": {"width": 8, "disc_width": 8, "map_smoothing": 5}}


def stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey surface of soft diagonal stripes with a random phase and mild noise (uint8, size x size x 3)."""
    y, x = np.mgrid[:size, :size]
    phase = rng.uniform(0, 2 * np.pi)
    surface = 110 + 30 * np.sin((x + y) * 0.6 + phase) + rng.normal(0, 4, (size, size))
    return np.repeat(surface.clip(0, 255)[:, :, None], 3, axis=2).astype(np.uint8)


def surface_with_large_defects(root: Path, size: int, seed: int = 0) -> Path:
    """Training and test images of the striped surface; defects are squares of a third of the side, flat and of
    an odd grey."""
    rng, side = np.random.default_rng(seed), size * 10 // 32
    for i in range(TRAIN_IMAGES):
        write_png(root / "train" / "good" / f"{i:03d}.png", stripes(rng, size))
    for i in range(TEST_IMAGES):
        write_png(root / "test" / "good" / f"{i:03d}.png", stripes(rng, size))
        image, mask = stripes(rng, size), np.zeros((size, size), np.uint8)
        y, x = rng.integers(2, size - side - 2, 2)
        image[y:y + side, x:x + side] = rng.choice([(30, 30, 30), (235, 235, 235)])
        mask[y:y + side, x:x + side] = 255
        write_png(root / "test" / "blot" / f"{i:03d}.png", image)
        write_png(root / "ground_truth" / "blot" / f"{i:03d}_mask.png", mask)
    return root


def marks(name: str) -> list:
    return [pytest.mark.slow] if name in SLOW else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=marks(n)) for n in methods.available()])
def test_a_short_training_beats_chance_by_the_margin(name, tmp_path):
    assert name in STEPS, f"method {name} has no step budget in this test: give it one"
    size = SIZES.get(name, SIZE)
    data = surface_with_large_defects(tmp_path / "surface", size)
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(run), method=name, options=OPTIONS[name], max_steps=STEPS[name],
                      recipe="budget", batch_size=8, image_size=size, validation_fraction=0.0, seed=0,
                      precision="fp32", device="cpu", score_window=5))
    metrics = evaluate(EvaluationConfig(run=str(run), data=str(data), device="cpu", precision="fp32"))
    assert metrics["overall"]["image_auroc"] >= 0.5 + MARGIN
