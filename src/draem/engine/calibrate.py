"""Decision thresholds for a trained model, from normal images and simulated or real defects."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from draem.data.catalog import select_dataset
from draem.data.datasets import LabelledImages, TrainImages
from draem.data.layout import GOOD
from draem.engine.config import TrainConfig
from draem.engine.devices import resolve_device
from draem.engine.inference import Predictor
from draem.engine.recipe import window_candidates
from draem.engine.run import LoadedModel, ModelInfo, load_model, save_model, training_folder
from draem.errors import DraemError
from draem.methods.base import AnomalyModel
from draem.metrics import PixelScores, auroc, f1_max
from draem.scoring import IMAGE_SCORE_WINDOW
from draem.synthesis.simulator import SimulationConfig, simulate_anomalies
from draem.synthesis.sources import grey_sources, procedural_textures

log = logging.getLogger("draem")

NORMAL, DEFECTIVE = "normal", "defective"
MAX_PASSES = 8
MAX_CALIBRATION_IMAGES = 256


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


def calibrate_with_labelled_images(predictor: Predictor, batches: Iterable[dict[str, torch.Tensor]],
                                   kept_pixel_levels: dict[str, Any] | None = None) -> Thresholds:
    """F1-optimal thresholds from labelled validation images (batches with image, mask, valid, defective).

    With `kept_pixel_levels` (a run's earlier thresholds) the defective images have no masks: the image threshold
    comes from these images and the pixel threshold and range are kept.
    """
    pixels = PixelScores()
    scores, labels = [], []
    for batch, maps, image_scores in predictor.run(batches):
        if kept_pixel_levels is None:
            for anomaly_map, mask, valid in zip(maps, batch["mask"], batch["valid"], strict=True):
                pixels.add(anomaly_map, mask, DEFECTIVE if mask.any() else NORMAL, valid)
        scores.append(image_scores)
        labels.append(batch["defective"].bool())
    image_scores, image_labels = torch.cat(scores), torch.cat(labels)
    if kept_pixel_levels is None:
        return thresholds_from_scores(image_scores, image_labels, pixels, "labelled defects")
    return Thresholds(image=midway_threshold(image_scores, image_labels), pixel=kept_pixel_levels["pixel"],
                      image_low=float(image_scores.min()), image_high=float(image_scores.max()),
                      pixel_low=kept_pixel_levels["pixel_low"], pixel_high=kept_pixel_levels["pixel_high"],
                      method=f"labelled images without masks (pixel threshold kept from "
                             f"{kept_pixel_levels['method']})",
                      normal_images=int((~image_labels).sum()), defective_images=int(image_labels.sum()))


def recalibrate(run: str | Path, data: str | Path | None = None, category: str | None = None,
                normal: str | Path | None = None, abnormal: str | Path | None = None, masks: str | Path | None = None,
                device: str = "auto", precision: str = "auto", batch_size: int = 8, workers: int = 0) -> Thresholds:
    """F1-optimal thresholds from a labelled validation set (a dataset's test split, or folders of good and
    defective images such as exported reviews); saved into the model. Defective images without masks set the
    image threshold only, keeping the run's pixel threshold."""
    loaded = load_model(run)
    samples = select_dataset(data, category, normal, abnormal, masks, trained_on=training_folder(loaded.path.parent),
                             testing=True).test_samples()
    masked = any(s.mask_path is not None for s in samples if s.defect_type != GOOD)
    if not masked and not loaded.info.thresholds:
        raise DraemError(f"{abnormal or data}: the defective images have no masks and {loaded.path} has no pixel "
                         "threshold to keep; give --masks, or calibrate on simulated defects by training")
    images = LabelledImages(samples, loaded.info.image_size, loaded.info.fit, loaded.info.resize)
    loader = DataLoader(images, batch_size=batch_size, num_workers=workers)
    predictor = Predictor(loaded, resolve_device(device), precision)
    thresholds = calibrate_with_labelled_images(predictor, loader, None if masked else loaded.info.thresholds)
    loaded.info.thresholds = thresholds.as_dict()
    save_model(loaded.path, loaded.model, loaded.info)
    return thresholds


def calibration_samples(config: TrainConfig, images: list[Path], textures: list[Path]) -> list[LabelledBatch]:
    """The held-out normal images (up to MAX_CALIBRATION_IMAGES), each followed by simulated defects on copies
    of it, drawn from the run's seed: what calibration and the choice of score window see."""
    images = images[:MAX_CALIBRATION_IMAGES]
    generator = torch.Generator().manual_seed(config.seed)
    picks = torch.randint(0, max(len(textures), 1), (len(images),), generator=generator).tolist()
    dataset = TrainImages(images, config.image_size, config.fit, textures, config.resize)
    items = [dataset[(i, t)] for i, t in enumerate(picks)]
    batch = torch.stack([item["image"] for item in items])
    sources = (torch.stack([item["source"] for item in items]) if textures
               else procedural_textures(len(images), config.image_size, generator))
    if config.source_colour == "gray":
        sources = grey_sources(sources)
    return simulate_defective_copies(batch, sources, SimulationConfig(), config.seed)


def calibrate_after_training(model: AnomalyModel, info: ModelInfo, config: TrainConfig, images: list[Path],
                             textures: list[Path], device: torch.device) -> Thresholds:
    """Thresholds from held-out normal images and simulated defects on them; first, without a --score-window
    under the budget recipe, the window that best separates the two (written into `info`)."""
    samples = calibration_samples(config, images, textures)
    predictor = Predictor(LoadedModel(model, info, Path(config.out)), device)
    if config.score_window is None and config.recipe == "budget":
        separation = choose_score_window(predictor, samples, window_candidates(config.image_size))
        log.info("score window %d chosen on simulated defects (image AUROC by window: %s)", info.score_window,
                 ", ".join(f"{w}: {a:.4f}" for w, a in separation.items()))
    return calibrate_with_simulated_defects(predictor, samples)
