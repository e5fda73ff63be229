"""How firm the budget recipe's choice of score window is, for a trained run: each window's image AUROC on the
simulated defects the choice is made on, how often a bootstrap of those images would choose it, and (afterwards,
not part of any choice) its image AUROC on the test set.

    python benchmarks/score_window.py --run recipe-runs/runs/budget/riad-metal-s0 \\
        [--model recipe-runs/ingredients/riad-metal-s0/budget] [--data demo/metal] [--bootstrap 1000]

The simulated defects are the ones training chose on (the run's held-out good images and seed, scored at the
precision training used); the test set is scored in fp32, as `draem test` does for the recipe's tables. Also
printed: the median area of the simulated and of the real defects. Methods whose score ignores the window
(OCR-GAN) are reported as such.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from draem.data.catalog import select_dataset
from draem.data.datasets import LabelledImages
from draem.engine.calibrate import best_window, calibration_samples
from draem.engine.config import TrainConfig
from draem.engine.devices import resolve_device
from draem.engine.inference import Predictor
from draem.engine.recipe import window_candidates
from draem.engine.run import RunFiles, load_model
from draem.engine.sampling import training_images
from draem.metrics import auroc
from draem.scoring import image_score


def maps_scores_labels(predictor: Predictor, batches: Iterable[dict[str, torch.Tensor]]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps, valid regions, the model's own scores, defect labels, and the defective images' defect areas."""
    maps, valid, scores, labels, areas = [], [], [], [], []
    for batch, batch_maps, batch_scores in predictor.run(batches):
        maps.append(batch_maps)
        valid.append(batch.get("valid", torch.ones_like(batch_maps, dtype=torch.bool)).bool().reshape(batch_maps.shape))
        scores.append(batch_scores)
        masks = batch["mask"].flatten(1).bool()
        labels.append(masks.any(1))
        areas.append(masks.float().mean(1))
    labels_all, areas_all = torch.cat(labels), torch.cat(areas)
    return torch.cat(maps), torch.cat(valid), torch.cat(scores), labels_all, areas_all[labels_all]


def window_scores(maps: torch.Tensor, valid: torch.Tensor, windows: tuple[int, ...]) -> dict[int, torch.Tensor]:
    return {w: image_score(maps, valid, w) for w in windows}


def bootstrap_choices(scores: dict[int, torch.Tensor], labels: torch.Tensor, draws: int) -> dict[int, float]:
    """The share of bootstrap draws (good and defective images resampled apart) in which each window is chosen."""
    windows = tuple(scores)
    good, defective = (~labels).nonzero()[:, 0], labels.nonzero()[:, 0]
    generator = torch.Generator().manual_seed(0)
    chosen = dict.fromkeys(windows, 0)
    for _ in range(draws):
        pick = torch.cat([good[torch.randint(len(good), (len(good),), generator=generator)],
                          defective[torch.randint(len(defective), (len(defective),), generator=generator)]])
        chosen[best_window({w: auroc(scores[w][pick], labels[pick]) for w in windows})] += 1
    return {w: count / draws for w, count in chosen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="the training run (its config.json)")
    parser.add_argument("--model", type=Path, help="folder of the model.pt to examine (default: --run)")
    parser.add_argument("--data", help="the test data (default: the run's training data)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    config = TrainConfig.from_dict(json.loads(RunFiles(args.run).config.read_text())["train"])
    loaded = load_model(args.model or args.run)
    windows = window_candidates(config.image_size)

    images = training_images(config)[1]
    simulated = [{"image": b.images, "mask": b.masks}
                 for b in calibration_samples(config, images.calibration, images.textures)]
    device = resolve_device("auto")
    maps, valid, scores, labels, areas = maps_scores_labels(Predictor(loaded, device), simulated)
    if not torch.allclose(scores, image_score(maps, valid, loaded.info.score_window), atol=1e-4):
        print(f"{config.method}: its image score is not the windowed maximum of its map; the window does not apply")
        return
    scores = window_scores(maps, valid, windows)
    on_simulated = {w: auroc(scores[w], labels) for w in windows}
    shares = bootstrap_choices(scores, labels, args.bootstrap)
    print(f"simulated defects: {int((~labels).sum())} good and {int(labels.sum())} defective images, median "
          f"defect area {100 * float(areas.median()):.2f} % of the image; window chosen {best_window(on_simulated)}, "
          f"the model's {loaded.info.score_window}")

    samples = select_dataset(args.data or config.data, config.category).test_samples()
    images = LabelledImages(samples, loaded.info.image_size, loaded.info.fit, loaded.info.resize)
    maps, valid, _, labels, areas = maps_scores_labels(Predictor(loaded, device, "fp32"),
                                                       DataLoader(images, batch_size=8))
    on_test = {w: auroc(score, labels) for w, score in window_scores(maps, valid, windows).items()}
    print(f"test set: {int((~labels).sum())} good and {int(labels.sum())} defective images, median defect area "
          f"{100 * float(areas.median()):.2f} % of the image")
    print(f"{'window':>6} {'simulated AUROC':>16} {'chosen in bootstrap':>20} {'test AUROC':>11}")
    for w in windows:
        print(f"{w:>6} {on_simulated[w]:>16.4f} {100 * shares[w]:>19.0f}% {on_test[w]:>11.4f}")


if __name__ == "__main__":
    main()
