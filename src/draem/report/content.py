"""What the HTML report shows, gathered by the evaluation: plain data, no rendering."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Example:
    """One test image shown in the report, at the evaluation size."""

    title: str
    path: str
    defect_type: str
    score: float
    image: torch.Tensor
    anomaly_map: torch.Tensor
    ground_truth: torch.Tensor
    predicted_mask: torch.Tensor | None


@dataclass
class PixelCurve:
    """Pixel-level true/false positive counts at a grid of thresholds (score >= t)."""

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    positives: int
    negatives: int


@dataclass
class ReportContent:
    """Everything the report page needs."""

    title: str
    metrics: dict
    image_scores: np.ndarray
    labels: np.ndarray
    defect_types: list[str]
    thresholds: dict
    pixel_curve: PixelCurve | None
    note: str = ""
    false_positives: list[Example] = field(default_factory=list)
    false_negatives: list[Example] = field(default_factory=list)
    true_detections: list[Example] = field(default_factory=list)
