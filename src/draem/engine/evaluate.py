"""Evaluate a trained run on an MVTec-layout test set: image and pixel metrics, overall and per type."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from draem.data.catalog import select_dataset
from draem.data.datasets import LabelledImages
from draem.data.layout import GOOD
from draem.engine.devices import resolve_device
from draem.engine.inference import Predictor
from draem.engine.run import RunFiles, load_model, training_folder
from draem.files import output_folder, write_json, write_text
from draem.metrics import PixelScores, auroc, average_precision, f1_max
from draem.report.content import Example, PixelCurve, ReportContent
from draem.report.html import write_report
from draem.scoring import check_window

log = logging.getLogger("draem")

PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "aupro")
METRIC_NAMES = ("image_auroc", "image_ap", "image_f1_max", *PIXEL_METRICS)


@dataclass
class EvaluationConfig:
    """Settings of one evaluation."""

    run: str
    data: str | None
    category: str | None = None
    normal: str | None = None
    abnormal: str | None = None
    masks: str | None = None
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"
    workers: int = 0
    out: str | None = None
    score_window: int | None = None
    resize: str | None = None


def image_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Image AUROC, AP and best F1 of image scores against defective (1) / good (0) labels."""
    return {"image_auroc": auroc(scores, labels), "image_ap": average_precision(scores, labels),
            "image_f1_max": f1_max(scores, labels)[0]}


def format_table(metrics: dict) -> str:
    """The metrics as an aligned text table, one row per defect type and one overall."""
    rows = [("all", metrics["overall"]), *metrics["defect_types"].items()]
    header = f"{'defect type':<16}{'images':>7}" + "".join(f"{n:>14}" for n in METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for name, values in rows:
        cells = "".join(f"{'n/a':>14}" if values[n] is None else f"{values[n]:>14.4f}" for n in METRIC_NAMES)
        lines.append(f"{name:<16}{values['images']:>7}{cells}")
    return "\n".join(lines)


def pixel_curve(pixels: PixelScores) -> PixelCurve:
    """Pixel counts on a threshold grid dense near 0, where most normal pixels lie."""
    grid = np.unique(np.concatenate([np.linspace(0, 1, 201), np.logspace(-6, 0, 121)]))
    true_pos, false_pos, positives, negatives = pixels.counts(grid.astype(np.float32))
    return PixelCurve(grid, true_pos, false_pos, positives, negatives)


def pick_examples(scores: torch.Tensor, labels: torch.Tensor, threshold: float, per_gallery: int = 6,
                  seed: int = 0) -> dict[str, list[int]]:
    """Indices of the worst false positives and negatives and a seeded sample of true detections."""
    order = torch.argsort(scores, descending=True).tolist()
    false_pos = [i for i in order if not labels[i] and scores[i] >= threshold]
    false_neg = [i for i in reversed(order) if labels[i] and scores[i] < threshold]
    hits = [i for i in order if labels[i] and scores[i] >= threshold]
    chosen = torch.randperm(len(hits), generator=torch.Generator().manual_seed(seed))[:per_gallery]
    return {"false_positives": false_pos[:per_gallery], "false_negatives": false_neg[:per_gallery],
            "true_detections": [hits[i] for i in sorted(chosen.tolist())]}


def _examples(predictor: Predictor, images: LabelledImages, indices: list[int], title: str,
              pixel_threshold: float | None) -> list[Example]:
    examples = []
    for index in indices:
        item = images[index]
        maps, scores = predictor(item["image"][None], item["valid"][None])
        sample = images.samples[index]
        examples.append(Example(
            title, str(sample.path), sample.defect_type, float(scores[0]), item["image"],
            maps[0].float().cpu(), item["mask"],
            None if pixel_threshold is None else maps[0].float().cpu() >= pixel_threshold))
    return examples


def evaluate(config: EvaluationConfig) -> dict:
    """Score every test image; write metrics.json, scores.csv and report.html; return the metrics."""
    chosen_out = output_folder(config.out) if config.out else None
    loaded = load_model(config.run)
    if config.score_window is not None:
        loaded.info.score_window = check_window(config.score_window)
    if config.resize is not None:
        loaded.info.resize = config.resize
    dataset = select_dataset(config.data, config.category, config.normal, config.abnormal, config.masks,
                             trained_on=training_folder(loaded.path.parent), testing=True)
    samples = dataset.test_samples()
    predictor = Predictor(loaded, resolve_device(config.device), config.precision, config.backend)
    images = LabelledImages(samples, loaded.info.image_size, loaded.info.fit, loaded.info.resize)
    loader = DataLoader(images, batch_size=config.batch_size, num_workers=config.workers)
    has_masks = all(s.mask_path is not None for s in samples if s.defect_type != GOOD)
    if not has_masks:
        log.warning("%s: some defective test images have no mask: pixel metrics are not computed",
                    dataset.root)

    pixels = PixelScores()
    image_scores = torch.empty(len(samples))
    for batch, maps, scores in tqdm(predictor.run(loader), total=len(loader), desc="test",
                                    unit="batch", dynamic_ncols=True):
        if has_masks:
            for index, anomaly_map, mask, valid in zip(batch["index"].tolist(), maps, batch["mask"],
                                                       batch["valid"], strict=True):
                pixels.add(anomaly_map, mask, samples[index].defect_type, valid)
        image_scores[batch["index"]] = scores

    types = [t for t in dict.fromkeys(s.defect_type for s in samples) if t != GOOD]
    labels = torch.tensor([s.defect_type != GOOD for s in samples])

    def group_metrics(groups: list[str]) -> dict[str, float | None]:
        chosen = torch.tensor([s.defect_type in groups for s in samples])
        pixel = pixels.compute(groups) if has_masks else dict.fromkeys(PIXEL_METRICS)
        return {"images": int(chosen.sum()), **image_metrics(image_scores[chosen], labels[chosen]), **pixel}

    metrics = {
        "run": str(loaded.path), "method": loaded.info.method, "options": loaded.info.options,
        "data": str(dataset.root), "category": dataset.name,
        "precision": predictor.precision, "backend": predictor.backend, "score_window": loaded.info.score_window,
        "resize": loaded.info.resize,
        "overall": group_metrics([GOOD, *types]),
        "defect_types": {t: group_metrics([GOOD, t]) for t in types},
    }
    out = chosen_out or loaded.path.parent
    files = RunFiles(out)
    write_json(files.metrics, metrics)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["path", "defect_type", "score"])
    for sample, score in zip(samples, image_scores.tolist(), strict=True):
        writer.writerow([sample.path, sample.defect_type, f"{score:.6f}"])
    write_text(out / "scores.csv", table.getvalue())

    thresholds = loaded.info.thresholds
    image_threshold = thresholds["image"] if thresholds else f1_max(image_scores, labels)[1]
    pixel_threshold = thresholds["pixel"] if thresholds else None
    chosen = pick_examples(image_scores, labels, image_threshold)
    content = ReportContent(
        title=f"{loaded.info.method.upper()} on {dataset.name}", metrics=metrics, image_scores=image_scores.numpy(),
        labels=labels.numpy(), defect_types=[s.defect_type for s in samples], thresholds=thresholds,
        pixel_curve=pixel_curve(pixels) if has_masks else None, note=loaded.model.report_note,
        **{name: _examples(predictor, images, indices, name.replace("_", " ")[:-1], pixel_threshold)
           for name, indices in chosen.items()})
    write_report(files.report, content)
    log.info("metrics written to %s, report to %s", files.metrics, files.report)
    return metrics
