"""Metrics against scikit-learn and a brute-force AUPRO written here; streaming equals in-memory."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from skimage.measure import label as label_components
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
)

from draem import metrics
from draem.metrics import PixelScores, aupro, auroc, average_precision, f1_max


def random_scores(rng: np.random.Generator, size: int, decimals: int | None) -> tuple:
    """Float32 scores with a signal on the positives; rounding creates many ties."""
    labels = rng.random(size) < 0.3
    labels[:2] = [True, False]
    scores = rng.normal(size=size) + 1.2 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores.astype(np.float32), labels


def random_images(rng: np.random.Generator, count: int, size: int = 12, decimals: int = 1):
    """(N,H,W) float32 maps and masks with several blobs per image and tied scores."""
    masks = np.zeros((count, size, size), dtype=bool)
    for mask in masks:
        for _ in range(rng.integers(1, 4)):
            row, col = rng.integers(0, size - 3, 2)
            height, width = rng.integers(1, 4, 2)
            mask[row : row + height, col : col + width] = True
        mask |= rng.random((size, size)) < 0.03
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    return np.round(maps, decimals).astype(np.float32), masks


def reference_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """Brute force: (FPR, PRO) at every distinct score, trapezoids cut at max_fpr, normalised."""
    maps = maps.astype(np.float64)
    regions = []
    for index, mask in enumerate(masks):
        components = label_components(mask, connectivity=2)
        regions += [(index, components == k) for k in range(1, components.max() + 1)]
    negatives = maps[~masks]
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        fpr = np.mean(negatives >= threshold)
        pro = np.mean([np.mean(maps[i][region] >= threshold) for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


@pytest.fixture(params=[5, 1 << 20], ids=["tiny-chunks", "default-chunks"])
def chunk_size(request, monkeypatch) -> int:
    monkeypatch.setattr(metrics, "CHUNK_SIZE", request.param)
    return request.param


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_ap_match_sklearn(seed: int, decimals: int | None, chunk_size: int) -> None:
    scores, labels = random_scores(np.random.default_rng(seed), 400 + 37 * seed, decimals)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


def test_auroc_counts_from_the_smaller_side_too() -> None:
    scores, labels = random_scores(np.random.default_rng(3), 300, 1)
    flipped = ~labels
    assert flipped.sum() > (~flipped).sum()
    assert auroc(scores, flipped) == pytest.approx(roc_auc_score(flipped, scores), abs=1e-12)


def test_float64_and_torch_inputs() -> None:
    rng = np.random.default_rng(4)
    scores, labels = rng.random(500), rng.random(500) < 0.4
    assert auroc(torch.from_numpy(scores), torch.from_numpy(labels).int()) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )
    assert average_precision(scores, labels.astype(np.int64)) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_f1_max_matches_precision_recall_curve(seed: int, decimals: int | None) -> None:
    scores, labels = random_scores(np.random.default_rng(seed), 300, decimals)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.nanmax(2 * precision * recall / (precision + recall))
    best, threshold = f1_max(scores, labels)
    assert best == pytest.approx(expected, abs=1e-12)
    assert f1_score(labels, scores >= threshold) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("max_fpr", [0.3, 1.0, 0.05])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_brute_force(seed: int, max_fpr: float, chunk_size: int) -> None:
    maps, masks = random_images(np.random.default_rng(seed), count=3)
    expected = reference_aupro(maps, masks, max_fpr)
    assert aupro(maps, masks, max_fpr) == pytest.approx(expected, abs=1e-9)
    assert aupro(torch.from_numpy(maps), torch.from_numpy(masks), max_fpr) == pytest.approx(
        expected, abs=1e-9
    )


def test_aupro_single_image_and_boundary_inside_a_tie_group() -> None:
    maps, masks = random_images(np.random.default_rng(7), count=1, decimals=0)
    for max_fpr in (0.1, 0.3, 0.77):
        assert aupro(maps[0], masks[0], max_fpr) == pytest.approx(
            reference_aupro(maps, masks, max_fpr), abs=1e-9
        )


def test_pixel_scores_subset_equals_in_memory(chunk_size: int) -> None:
    rng = np.random.default_rng(11)
    maps, masks = random_images(rng, count=9)
    masks[:3] = False
    groups = ["good", "good", "good", "scratch", "hole", "scratch", "hole", "scratch", "hole"]
    accumulator = PixelScores(max_fpr=0.3)
    for anomaly_map, mask, group in zip(maps[:6], masks[:6], groups[:6], strict=True):
        accumulator.add(torch.from_numpy(anomaly_map), torch.from_numpy(mask), group)
    accumulator.compute()
    for anomaly_map, mask, group in zip(maps[6:], masks[6:], groups[6:], strict=True):
        accumulator.add(anomaly_map, mask, group)
    assert accumulator.groups == ["good", "scratch", "hole"]

    for selection in (None, ["good", "scratch"], ["good", "hole"], ["scratch"]):
        chosen = [i for i, g in enumerate(groups) if selection is None or g in selection]
        sub_maps, sub_masks = maps[chosen], masks[chosen]
        result = accumulator.compute(selection)
        assert result["pixel_auroc"] == pytest.approx(
            roc_auc_score(sub_masks.ravel(), sub_maps.ravel()), abs=1e-12
        )
        assert result["pixel_ap"] == pytest.approx(
            average_precision_score(sub_masks.ravel(), sub_maps.ravel()), abs=1e-12
        )
        assert result["aupro"] == pytest.approx(reference_aupro(sub_maps, sub_masks, 0.3), abs=1e-9)


def test_invalid_pixels_are_ignored() -> None:
    maps, masks = random_images(np.random.default_rng(5), count=2, size=10)
    padded_maps = np.full((2, 14, 14), 9.0, dtype=np.float32)
    padded_masks = np.ones((2, 14, 14), dtype=bool)
    padded_maps[:, 2:12, 2:12], padded_masks[:, 2:12, 2:12] = maps, masks
    padded_masks[1, :, :2] = False
    valid = np.zeros((14, 14), dtype=bool)
    valid[2:12, 2:12] = True
    padded, cropped = PixelScores(), PixelScores()
    for index in range(2):
        padded.add(padded_maps[index], padded_masks[index], "defect", valid=valid)
        cropped.add(maps[index], masks[index], "defect")
    assert padded.compute() == pytest.approx(cropped.compute(), abs=1e-12)
    assert padded.compute()["aupro"] == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-9)


def test_perfect_detector_scores_one() -> None:
    _, masks = random_images(np.random.default_rng(6), count=4)
    perfect = masks.astype(np.float32)
    accumulator = PixelScores()
    for mask, anomaly_map in zip(masks, perfect, strict=True):
        accumulator.add(anomaly_map, mask, "defect")
    assert accumulator.compute() == {"pixel_auroc": 1.0, "pixel_ap": 1.0, "aupro": 1.0}
    assert aupro(perfect, masks, max_fpr=1.0) == 1.0
    image_labels = np.array([0, 1, 1, 0, 1])
    image_scores = np.array([0.1, 0.8, 0.9, 0.2, 0.85])
    assert auroc(image_scores, image_labels) == 1.0
    assert average_precision(image_scores, image_labels) == 1.0
    assert f1_max(image_scores, image_labels) == (1.0, 0.8)


def test_degenerate_inputs_raise() -> None:
    with pytest.raises(ValueError, match="positive"):
        auroc(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="negative"):
        average_precision(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(ValueError, match="0 and 1"):
        auroc(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        f1_max(np.array([np.nan, 0.2]), np.array([0, 1]))
    accumulator = PixelScores()
    accumulator.add(np.zeros((4, 4)), np.zeros((4, 4), dtype=bool), "good")
    with pytest.raises(ValueError, match="positive"):
        accumulator.compute(["good"])
    with pytest.raises(ValueError, match="'crack'"):
        accumulator.compute(["good", "crack"])
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(np.zeros((4, 4)), np.eye(4, dtype=bool), max_fpr=0.0)
