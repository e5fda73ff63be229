"""How far the fast path (bf16 channels-last) moves metrics and anomaly maps from the exact fp32 path.

    python benchmarks/fast_path_accuracy.py --run RUN --data ../shared/data/mtd
    python benchmarks/fast_path_accuracy.py --full-size-steps 40 --data ../shared/data/mtd

The second form first trains a full-size (128/64) model for a few bf16 steps (fast path needs a model
whose maps are not flat) and then compares on it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from draem.data.catalog import open_dataset
from draem.data.datasets import LabelledImages
from draem.engine.evaluate import METRIC_NAMES, EvaluationConfig, evaluate
from draem.engine.inference import Predictor
from draem.engine.run import load_model
from draem.engine.train import TrainConfig, train

CPU = torch.device("cpu")


def largest_map_difference(run: str, data: str, category: str | None, images: int) -> float:
    """Max abs difference of anomaly maps, fp32 vs bf16, over the first `images` test images."""
    loaded = load_model(run)
    samples = open_dataset(data, category).test_samples()[:images]
    loader = DataLoader(LabelledImages(samples, loaded.info.image_size, loaded.info.fit), batch_size=4)
    exact, fast = Predictor(load_model(run), CPU, "fp32"), Predictor(load_model(run), CPU, "bf16")
    worst = 0.0
    for batch in loader:
        worst = max(worst, float((exact(batch["image"])[0] - fast(batch["image"])[0]).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run; without it a full-size model is trained first")
    parser.add_argument("--data", required=True)
    parser.add_argument("--category")
    parser.add_argument("--full-size-steps", type=int, default=40)
    parser.add_argument("--map-images", type=int, default=64, help="images for the map comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = args.run
        if run is None:
            run = str(Path(folder) / "full")
            train(TrainConfig(data=args.data, category=args.category, out=run, max_steps=args.full_size_steps,
                              precision="bf16", validation_fraction=0.05))
        results = {p: evaluate(EvaluationConfig(run=run, data=args.data, category=args.category, precision=p,
                                                out=str(Path(folder) / p)))["overall"] for p in ("fp32", "bf16")}
        print(f"{'metric':<14}{'fp32':>10}{'bf16':>10}{'|diff|':>10}")
        for name in METRIC_NAMES:
            exact, fast = results["fp32"][name], results["bf16"][name]
            print(f"{name:<14}{exact:>10.4f}{fast:>10.4f}{abs(exact - fast):>10.4f}")
        difference = largest_map_difference(run, args.data, args.category, args.map_images)
        print(f"largest anomaly-map difference over {args.map_images} images: {difference:.4f}")


if __name__ == "__main__":
    main()
