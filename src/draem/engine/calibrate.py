"""Decision thresholds for a trained model, from normal images and simulated or real defects."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from draem.data.catalog import open_dataset
from draem.data.datasets import LabelledImages
from draem.engine.devices import resolve_device
from draem.engine.inference import Predictor
from draem.engine.run import load_model, save_model
from draem.metrics import PixelScores, auroc, f1_max
from draem.scoring import IMAGE_SCORE_WINDOW
from draem.synthesis.simulator import SimulationConfig, simulate_anomalies

NORMAL, DEFECTIVE = "normal", "defective"
MAX_PASSES = 8


@dataclass
class Thresholds:
    """Image and pixel decision thresholds, with the score ranges used to normalise scores."""

    image: float
    pixel: float
    image_low: float
    image_high: float
    pixel_low: float
    pixel_high: float
    method: str
    normal_images: int
    defective_images: int

    def as_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


def normalise(scores: torch.Tensor, threshold: float, low: float, high: float) -> torch.Tensor:
    """Map scores to [0, 1] so that the threshold lands on 0.5 (min-max spread around it)."""
    return ((scores - threshold) / max(high - low, 1e-6) + 0.5).clamp(0, 1)


def midway_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The F1-optimal cut, moved halfway down to the next lower score so it sits inside the gap."""
    _, cut = f1_max(scores, labels)
    below = scores[scores < cut]
    return float(cut) if len(below) == 0 else float((below.max() + cut) / 2)


def thresholds_from_scores(image_scores: torch.Tensor, image_labels: torch.Tensor,
                           pixels: PixelScores, method: str) -> Thresholds:
    """Thresholds from labelled image scores and labelled pixel maps (groups normal, defective)."""
    _, pixel_cut = pixels.best_f1()
    low, high = pixels.value_range()
    return Thresholds(
        image=midway_threshold(image_scores, image_labels), pixel=float(pixel_cut),
        image_low=float(image_scores.min()), image_high=float(image_scores.max()),
        pixel_low=low, pixel_high=high, method=method,
        normal_images=int((~image_labels).sum()), defective_images=int(image_labels.sum()))


@dataclass
class LabelledBatch:
    """Images, their defect masks (B, H, W) and whether the batch holds simulated defects."""

    images: torch.Tensor
    masks: torch.Tensor
    defective: bool


def simulate_defective_copies(images: torch.Tensor, sources: torch.Tensor, simulation: SimulationConfig,
                              seed: int = 0, min_defective: int = 64, batch_size: int = 8) -> list[LabelledBatch]:
    """Batches of the normal images, each followed by simulated anomalies on copies of it (enough passes for
    `min_defective` defective images, at most MAX_PASSES)."""
    generator = torch.Generator().manual_seed(seed)
    always = SimulationConfig(**{**asdict(simulation), "anomaly_prob": 1.0, "image_rotation_prob": 0.0})
    passes = min(math.ceil(min_defective / len(images)), MAX_PASSES)
    batches = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        batches.append(LabelledBatch(batch, torch.zeros(len(batch), *batch.shape[-2:], dtype=torch.bool), False))
        for _ in range(passes):
            sim = simulate_anomalies(batch, sources[start:start + batch_size], generator, always)
            keep = sim.has_anomaly.cpu()
            if keep.any():
                batches.append(LabelledBatch(sim.augmented[keep], sim.mask[keep][:, 0].bool(), True))
    return batches


def _image_scores(predictor: Predictor, batches: list[LabelledBatch]) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.cat([predictor(batch.images)[1].float().cpu() for batch in batches])
    labels = torch.cat([torch.full((len(batch.images),), batch.defective) for batch in batches])
    return scores, labels


def choose_score_window(predictor: Predictor, batches: list[LabelledBatch], windows: tuple[int, ...],
                        preferred: int = IMAGE_SCORE_WINDOW) -> dict[int, float]:
    """Set the predictor's score window to the one whose image scores best separate the simulated defects
    from the normal images (image AUROC; ties go to the one nearest `preferred`); the AUROC of each."""
    info = predictor.loaded.info
    separation = {}
    for window in windows:
        info.score_window = window
        separation[window] = auroc(*_image_scores(predictor, batches))
    info.score_window = best_window(separation, preferred)
    return separation


def best_window(separation: dict[int, float], preferred: int = IMAGE_SCORE_WINDOW) -> int:
    """The window of highest separation; ties go to the one nearest `preferred`."""
    return max(separation, key=lambda w: (separation[w], -abs(w - preferred)))


def calibrate_with_simulated_defects(predictor: Predictor, batches: list[LabelledBatch]) -> Thresholds:
    """Thresholds from held-out normal images and simulated anomalies on copies of them."""
    pixels = PixelScores()
    scores, labels = [], []
    for batch in batches:
        maps, image_scores = predictor(batch.images)
        for anomaly_map, mask in zip(maps.float().cpu(), batch.masks.cpu(), strict=True):
            pixels.add(anomaly_map, mask, DEFECTIVE if batch.defective else NORMAL)
        scores.append(image_scores.float().cpu())
        labels.append(torch.full((len(batch.images),), batch.defective))
    return thresholds_from_scores(torch.cat(scores), torch.cat(labels), pixels, "simulated defects")


def calibrate_with_labelled_images(predictor: Predictor, batches: Iterable[dict[str, torch.Tensor]]
                                   ) -> Thresholds:
    """F1-optimal thresholds from labelled validation images (batches with image, mask, valid)."""
    pixels = PixelScores()
    scores, labels = [], []
    for batch, maps, image_scores in predictor.run(batches):
        for anomaly_map, mask, valid in zip(maps, batch["mask"], batch["valid"], strict=True):
            pixels.add(anomaly_map, mask, DEFECTIVE if mask.any() else NORMAL, valid)
        scores.append(image_scores)
        labels.append(batch["defective"])
    return thresholds_from_scores(torch.cat(scores), torch.cat(labels), pixels, "labelled defects")


def recalibrate(run: str | Path, data: str | Path, category: str | None = None, device: str = "auto",
                precision: str = "auto", batch_size: int = 8, workers: int = 0) -> Thresholds:
    """F1-optimal thresholds from a labelled validation set (its test split); saved into the model."""
    loaded = load_model(run)
    samples = open_dataset(data, category).test_samples()
    images = LabelledImages(samples, loaded.info.image_size, loaded.info.fit, loaded.info.resize)
    loader = DataLoader(images, batch_size=batch_size, num_workers=workers)
    thresholds = calibrate_with_labelled_images(Predictor(loaded, resolve_device(device), precision), loader)
    loaded.info.thresholds = thresholds.as_dict()
    save_model(loaded.path, loaded.model, loaded.info)
    return thresholds
