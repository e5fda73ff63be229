"""Evaluate a trained run on an MVTec-layout test set: image and pixel metrics, overall and per type."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from draem.data.datasets import LabelledImages
from draem.data.catalog import open_dataset
from draem.data.layout import GOOD
from draem.engine.devices import resolve_device
from draem.engine.inference import Predictor
from draem.engine.run import RunFiles, load_model
from draem.files import write_json, write_text
from draem.metrics import PixelScores, auroc, average_precision, f1_max

log = logging.getLogger("draem")

METRIC_NAMES = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro")


@dataclass
class EvaluationConfig:
    """Settings of one evaluation."""

    run: str
    data: str
    category: str | None = None
    batch_size: int = 8
    device: str = "auto"
    precision: str = "fp32"
    workers: int = 0
    out: str | None = None


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
        lines.append(f"{name:<16}{values['images']:>7}"
                     + "".join(f"{values[n]:>14.4f}" for n in METRIC_NAMES))
    return "\n".join(lines)


def evaluate(config: EvaluationConfig) -> dict:
    """Score every test image, compute the metrics, write metrics.json and scores.csv."""
    dataset = open_dataset(config.data, config.category)
    samples = dataset.test_samples()
    loaded = load_model(config.run)
    predictor = Predictor(loaded, resolve_device(config.device), config.precision)
    images = LabelledImages(samples, loaded.info.image_size, loaded.info.fit)
    loader = DataLoader(images, batch_size=config.batch_size, num_workers=config.workers)

    pixels = PixelScores()
    image_scores = torch.empty(len(samples))
    for batch, maps, scores in tqdm(predictor.run(loader), total=len(loader), desc="test",
                                    unit="batch", dynamic_ncols=True):
        for index, anomaly_map, mask, valid in zip(batch["index"].tolist(), maps, batch["mask"],
                                                   batch["valid"], strict=True):
            pixels.add(anomaly_map, mask, samples[index].defect_type, valid)
        image_scores[batch["index"]] = scores

    types = [t for t in dict.fromkeys(s.defect_type for s in samples) if t != GOOD]
    labels = torch.tensor([s.defect_type != GOOD for s in samples])

    def group_metrics(groups: list[str]) -> dict[str, float]:
        chosen = torch.tensor([s.defect_type in groups for s in samples])
        return {"images": int(chosen.sum()),
                **image_metrics(image_scores[chosen], labels[chosen]),
                **pixels.compute(groups)}

    metrics = {
        "run": str(loaded.path), "data": str(dataset.root), "category": dataset.name,
        "overall": group_metrics([GOOD, *types]),
        "defect_types": {t: group_metrics([GOOD, t]) for t in types},
    }
    out = Path(config.out) if config.out else Path(config.run)
    files = RunFiles(out)
    write_json(files.metrics, metrics)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["path", "defect_type", "score"])
    for sample, score in zip(samples, image_scores.tolist(), strict=True):
        writer.writerow([sample.path, sample.defect_type, f"{score:.6f}"])
    write_text(out / "scores.csv", table.getvalue())
    log.info("metrics written to %s", files.metrics)
    return metrics
