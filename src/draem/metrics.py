"""Exact anomaly-detection metrics (AUROC, AP, best F1, AUPRO) and a streaming pixel accumulator.

Every metric is computed from scores sorted once; counts at a threshold come from binary search,
so ties are handled exactly and the streaming accumulator never concatenates its groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

CHUNK_SIZE = 1 << 20
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_SIGN_BIT = np.uint32(0x80000000)
_LOW_32_BITS = np.uint64(0xFFFFFFFF)
_SHIFT_32 = np.uint64(32)

ArrayLike = torch.Tensor | np.ndarray


class _SortedPart:
    """Scores of one part in ascending order, with prefix sums of per-pixel region weights if any."""

    def __init__(self, values: np.ndarray, cum_weights: np.ndarray | None = None) -> None:
        self.values = values
        self.cum_weights = cum_weights

    def _query(self, thresholds: np.ndarray | np.floating) -> np.ndarray:
        return np.asarray(thresholds, dtype=self.values.dtype)

    def count_at_least(self, thresholds: np.ndarray | np.floating) -> np.ndarray:
        """Number of scores >= each threshold."""
        return self.values.size - np.searchsorted(self.values, self._query(thresholds), "left")

    def count_above(self, thresholds: np.ndarray | np.floating) -> np.ndarray:
        """Number of scores > each threshold."""
        return self.values.size - np.searchsorted(self.values, self._query(thresholds), "right")

    def weight_at_least(self, thresholds: np.ndarray | np.floating) -> np.ndarray:
        """Summed region weight of the scores >= each threshold."""
        cum = self.cum_weights
        return cum[-1] - cum[np.searchsorted(self.values, self._query(thresholds), "left")]

    def weight_above(self, thresholds: np.ndarray | np.floating) -> np.ndarray:
        """Summed region weight of the scores > each threshold."""
        cum = self.cum_weights
        return cum[-1] - cum[np.searchsorted(self.values, self._query(thresholds), "right")]

    def chunks(self, start: int = 0) -> Iterator[np.ndarray]:
        """The sorted scores from index start on, as views of at most CHUNK_SIZE elements."""
        for begin in range(start, self.values.size, CHUNK_SIZE):
            yield self.values[begin : begin + CHUNK_SIZE]


def _total_size(parts: Sequence[_SortedPart]) -> int:
    return sum(int(part.values.size) for part in parts)


def _all_chunks(parts: Sequence[_SortedPart]) -> Iterator[np.ndarray]:
    for part in parts:
        yield from part.chunks()


def _count_at_least(parts: Sequence[_SortedPart], thresholds: np.ndarray | np.floating) -> np.ndarray:
    return sum(part.count_at_least(thresholds) for part in parts)


def _count_above(parts: Sequence[_SortedPart], thresholds: np.ndarray | np.floating) -> np.ndarray:
    return sum(part.count_above(thresholds) for part in parts)


def _require_both_classes(n_negatives: int, n_positives: int) -> None:
    if n_negatives == 0 or n_positives == 0:
        raise ValueError(
            "metric needs at least one positive and one negative score; "
            f"got {n_positives} positive and {n_negatives} negative"
        )


def _auroc_core(negatives: Sequence[_SortedPart], positives: Sequence[_SortedPart]) -> float:
    """P(positive > negative) + P(tie) / 2, counted exactly over whichever side is smaller."""
    n_negatives, n_positives = _total_size(negatives), _total_size(positives)
    _require_both_classes(n_negatives, n_positives)
    twice_wins = 0
    if n_positives <= n_negatives:
        for chunk in _all_chunks(positives):
            below_or_tied = 2 * n_negatives - _count_at_least(negatives, chunk)
            twice_wins += int((below_or_tied - _count_above(negatives, chunk)).sum())
    else:
        for chunk in _all_chunks(negatives):
            above_or_tied = _count_at_least(positives, chunk) + _count_above(positives, chunk)
            twice_wins += int(above_or_tied.sum())
    return twice_wins / (2 * n_negatives * n_positives)


def _average_precision_core(
    negatives: Sequence[_SortedPart], positives: Sequence[_SortedPart]
) -> float:
    """Mean over positives of the precision at their own score (predicting positive when >=)."""
    n_negatives, n_positives = _total_size(negatives), _total_size(positives)
    _require_both_classes(n_negatives, n_positives)
    precision_sum = 0.0
    for chunk in _all_chunks(positives):
        true_positives = _count_at_least(positives, chunk)
        false_positives = _count_at_least(negatives, chunk)
        precision_sum += float((true_positives / (true_positives + false_positives)).sum())
    return precision_sum / n_positives


def _best_f1_core(
    negatives: Sequence[_SortedPart], positives: Sequence[_SortedPart]
) -> tuple[float, float]:
    """Best F1 over thresholds and the lowest threshold reaching it; optima lie at positive scores."""
    n_negatives, n_positives = _total_size(negatives), _total_size(positives)
    _require_both_classes(n_negatives, n_positives)
    best_f1, best_threshold = -1.0, math.nan
    for chunk in _all_chunks(positives):
        true_positives = _count_at_least(positives, chunk)
        false_positives = _count_at_least(negatives, chunk)
        f1 = 2 * true_positives / (true_positives + false_positives + n_positives)
        index = int(np.argmax(f1))
        if f1[index] > best_f1:
            best_f1, best_threshold = float(f1[index]), float(chunk[index])
    return best_f1, best_threshold


def _order_keys(values: np.ndarray) -> np.ndarray:
    """Map float32 values to uint32 keys that sort in the same order."""
    bits = values.view(np.uint32)
    return np.where(bits & _SIGN_BIT, ~bits, bits | _SIGN_BIT)


def _values_from_keys(keys: np.ndarray) -> np.ndarray:
    """Inverse of _order_keys."""
    bits = np.where(keys & _SIGN_BIT, keys & ~_SIGN_BIT, ~keys)
    return bits.astype(np.uint32).view(np.float32)


def _kth_largest(parts: Sequence[_SortedPart], rank: int) -> np.float32:
    """The rank-th largest float32 score across parts (rank 1 is the maximum), by bisection."""
    lowest = min(part.values[0] for part in parts)
    highest = max(part.values[-1] for part in parts)
    bounds = _order_keys(np.array([lowest, highest], dtype=np.float32))
    low, high = int(bounds[0]), int(bounds[1])
    while low < high:
        middle = (low + high + 1) // 2
        value = _values_from_keys(np.array([middle], dtype=np.uint32))[0]
        if int(_count_at_least(parts, value)) >= rank:
            low = middle
        else:
            high = middle - 1
    return _values_from_keys(np.array([low], dtype=np.uint32))[0]


def _aupro_core(
    negatives: Sequence[_SortedPart],
    positives: Sequence[_SortedPart],
    n_regions: int,
    max_fpr: float,
) -> float:
    """Normalised area under PRO(FPR) up to max_fpr, as a sum over negatives of the mean PRO step."""
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must lie in (0, 1]; got {max_fpr}")
    n_negatives = _total_size(negatives)
    _require_both_classes(n_negatives, _total_size(positives))
    budget = max_fpr * n_negatives
    boundary = _kth_largest(negatives, max(1, math.ceil(budget)))

    def pro_at_least(threshold: np.floating) -> float:
        return float(sum(part.weight_at_least(threshold) for part in positives)) / n_regions

    def pro_above(threshold: np.floating) -> float:
        return float(sum(part.weight_above(threshold) for part in positives)) / n_regions

    # Each negative with score s above the boundary widens the curve by 1/N between heights
    # PRO(> s) and PRO(>= s), so it adds their mean over N.
    twice_weight = 0.0
    for part in negatives:
        start = int(np.searchsorted(part.values, part._query(boundary), "right"))
        for chunk in part.chunks(start):
            heights = sum(
                region_part.weight_above(chunk) + region_part.weight_at_least(chunk)
                for region_part in positives
            )
            twice_weight += float(heights.sum())
    area = twice_weight / (2 * n_regions * n_negatives)

    # The tie group at the boundary is one straight segment, cut where FPR reaches max_fpr.
    n_above = int(_count_above(negatives, boundary))
    n_tied = int(_count_at_least(negatives, boundary)) - n_above
    width = budget - n_above
    start_height, end_height = pro_above(boundary), pro_at_least(boundary)
    cut_height = start_height + (end_height - start_height) * width / n_tied
    area += width / n_negatives * (start_height + cut_height) / 2
    return area / max_fpr


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype not in (torch.float32, torch.float64):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _as_scores(values: ArrayLike, dtype: type[np.floating] | None = None) -> np.ndarray:
    """Scores as a float array (float32/float64 kept unless dtype is given), rejecting NaN."""
    array = _to_numpy(values)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    elif array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    if np.isnan(array).any():
        raise ValueError("scores contain NaN")
    return array


def _as_labels(values: ArrayLike) -> np.ndarray:
    """Labels as a bool array; non-bool input must hold only 0 and 1."""
    array = _to_numpy(values)
    if array.dtype == bool:
        return array
    if not np.isin(array, (0, 1)).all():
        raise ValueError("labels must be bool or hold only 0 and 1")
    return array.astype(bool)


def _labelled_parts(
    scores: ArrayLike, labels: ArrayLike
) -> tuple[list[_SortedPart], list[_SortedPart]]:
    """Split scores by label into one sorted negative and one sorted positive part."""
    score_array, label_array = _as_scores(scores), _as_labels(labels)
    if score_array.shape != label_array.shape:
        raise ValueError(
            f"scores and labels differ in shape: {score_array.shape} vs {label_array.shape}"
        )
    negatives, positives = score_array[~label_array], score_array[label_array]
    negatives.sort()
    positives.sort()
    return [_SortedPart(negatives)], [_SortedPart(positives)]


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve, ties counted 1/2 (equals sklearn's roc_auc_score)."""
    return _auroc_core(*_labelled_parts(scores, labels))


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Step-wise average precision over distinct thresholds (equals sklearn's)."""
    return _average_precision_core(*_labelled_parts(scores, labels))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold t giving it (defective when score >= t)."""
    return _best_f1_core(*_labelled_parts(scores, labels))


def aupro(maps: ArrayLike, masks: ArrayLike, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to max_fpr for (N,H,W) or (H,W) maps.

    Regions are the 8-connected components of each mask; scores are compared as float32.
    """
    map_array, mask_array = _to_numpy(maps), _to_numpy(masks)
    if map_array.ndim == 2:
        map_array, mask_array = map_array[None], mask_array[None]
    if map_array.ndim != 3 or map_array.shape != mask_array.shape:
        raise ValueError(
            f"maps and masks must share an (N,H,W) or (H,W) shape; "
            f"got {map_array.shape} and {mask_array.shape}"
        )
    accumulator = PixelScores(max_fpr=max_fpr)
    for anomaly_map, mask in zip(map_array, mask_array, strict=True):
        accumulator.add(anomaly_map, mask, group="")
    negatives, positives, n_regions = accumulator._sorted_parts(None)
    return _aupro_core(negatives, positives, n_regions, max_fpr)


def _empty(dtype: type[np.generic]) -> np.ndarray:
    return np.empty(0, dtype=dtype)


@dataclass
class _GroupScores:
    """One group's pixel scores: sorted consolidated arrays plus per-image arrays not yet merged."""

    negatives: np.ndarray = field(default_factory=lambda: _empty(np.float32))
    positives: np.ndarray = field(default_factory=lambda: _empty(np.float32))
    region_sizes: np.ndarray = field(default_factory=lambda: _empty(np.uint32))
    cum_weights: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.float64))
    n_regions: int = 0
    pending_negatives: list[np.ndarray] = field(default_factory=list)
    pending_positives: list[np.ndarray] = field(default_factory=list)
    pending_region_sizes: list[np.ndarray] = field(default_factory=list)

    def consolidate(self) -> None:
        """Merge pending per-image arrays into the sorted arrays."""
        if self.pending_negatives:
            merged = np.concatenate([self.negatives, *self.pending_negatives])
            self.pending_negatives.clear()
            self.negatives = merged
            merged.sort()
        if self.pending_positives:
            self._consolidate_positives()

    def _consolidate_positives(self) -> None:
        # Sort (score, region size) pairs together without an index array: pack the score's
        # order key into the high 32 bits of a uint64 and the region size into the low bits.
        score_parts = [self.positives, *self.pending_positives]
        size_parts = [self.region_sizes, *self.pending_region_sizes]
        total = sum(part.size for part in score_parts)
        packed = np.empty(total, dtype=np.uint64)
        offset = 0
        for scores, sizes in zip(score_parts, size_parts, strict=True):
            for begin in range(0, scores.size, CHUNK_SIZE):
                keys = _order_keys(scores[begin : begin + CHUNK_SIZE]).astype(np.uint64)
                block = packed[offset : offset + keys.size]
                np.left_shift(keys, _SHIFT_32, out=block)
                block |= sizes[begin : begin + CHUNK_SIZE]
                offset += keys.size
        del score_parts, size_parts
        self.pending_positives.clear()
        self.pending_region_sizes.clear()
        self.positives = self.region_sizes = self.cum_weights = _empty(np.float32)
        packed.sort()
        self.positives = np.empty(total, dtype=np.float32)
        self.region_sizes = np.empty(total, dtype=np.uint32)
        self.cum_weights = np.zeros(total + 1, dtype=np.float64)
        running = 0.0
        for begin in range(0, total, CHUNK_SIZE):
            block = packed[begin : begin + CHUNK_SIZE]
            end = begin + block.size
            self.positives[begin:end] = _values_from_keys((block >> _SHIFT_32).astype(np.uint32))
            self.region_sizes[begin:end] = block & _LOW_32_BITS
            cum = self.cum_weights[begin + 1 : end + 1]
            np.cumsum(1.0 / self.region_sizes[begin:end], out=cum)
            cum += running
            running = float(cum[-1])


class PixelScores:
    """Streams per-image anomaly maps and masks into named groups and computes pixel metrics.

    Stored: 4 bytes per negative pixel and 16 per positive pixel (score, region size, weight sum).
    """

    def __init__(self, max_fpr: float = 0.3) -> None:
        if not 0.0 < max_fpr <= 1.0:
            raise ValueError(f"max_fpr must lie in (0, 1]; got {max_fpr}")
        self.max_fpr = max_fpr
        self._groups: dict[str, _GroupScores] = {}

    def add(
        self,
        anomaly_map: ArrayLike,
        mask: ArrayLike,
        group: str,
        valid: ArrayLike | None = None,
    ) -> None:
        """Record one image's (H,W) scores and bool defect mask; pixels where valid is False are ignored."""
        scores = _as_scores(anomaly_map, dtype=np.float32)
        defect = _as_labels(mask)
        if scores.ndim != 2 or scores.shape != defect.shape:
            raise ValueError(
                f"anomaly map and mask must share an (H,W) shape; got {scores.shape} and {defect.shape}"
            )
        normal = ~defect
        if valid is not None:
            valid_pixels = _as_labels(valid)
            if valid_pixels.shape != scores.shape:
                raise ValueError(
                    f"valid must have the anomaly map's shape {scores.shape}; got {valid_pixels.shape}"
                )
            defect = defect & valid_pixels
            normal &= valid_pixels
        labels, n_regions = ndimage.label(defect, structure=_EIGHT_CONNECTED)
        region_sizes = np.bincount(labels.ravel(), minlength=n_regions + 1).astype(np.uint32)
        scores_of_group = self._groups.setdefault(group, _GroupScores())
        scores_of_group.pending_negatives.append(scores[normal])
        scores_of_group.pending_positives.append(scores[defect])
        scores_of_group.pending_region_sizes.append(region_sizes[labels[defect]])
        scores_of_group.n_regions += n_regions

    @property
    def groups(self) -> list[str]:
        """Names of the groups added so far, in order of first appearance."""
        return list(self._groups)

    def _sorted_parts(
        self, groups: Sequence[str] | None
    ) -> tuple[list[_SortedPart], list[_SortedPart], int]:
        names = list(self._groups) if groups is None else list(dict.fromkeys(groups))
        if not names:
            raise ValueError("no groups to compute metrics over")
        for name in names:
            if name not in self._groups:
                raise ValueError(f"no images were added for group {name!r}")
            self._groups[name].consolidate()
        selected = [self._groups[name] for name in names]
        negatives = [_SortedPart(g.negatives) for g in selected if g.negatives.size]
        positives = [
            _SortedPart(g.positives, g.cum_weights) for g in selected if g.positives.size
        ]
        return negatives, positives, sum(g.n_regions for g in selected)

    def compute(self, groups: Sequence[str] | None = None) -> dict[str, float]:
        """pixel_auroc, pixel_ap and aupro over the images of the given groups (None: all)."""
        negatives, positives, n_regions = self._sorted_parts(groups)
        return {
            "pixel_auroc": _auroc_core(negatives, positives),
            "pixel_ap": _average_precision_core(negatives, positives),
            "aupro": _aupro_core(negatives, positives, n_regions, self.max_fpr),
        }

    def best_f1(self, groups: Sequence[str] | None = None) -> tuple[float, float]:
        """Best pixel F1 and the lowest threshold reaching it (defective when score >= t)."""
        negatives, positives, _ = self._sorted_parts(groups)
        return _best_f1_core(negatives, positives)

    def counts(self, thresholds: ArrayLike, groups: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """True and false positives at each threshold (score >= t), and the totals P and N."""
        negatives, positives, _ = self._sorted_parts(groups)
        values = _as_scores(thresholds, np.float32)
        return (_count_at_least(positives, values), _count_at_least(negatives, values),
                _total_size(positives), _total_size(negatives))

    def value_range(self, groups: Sequence[str] | None = None) -> tuple[float, float]:
        """Lowest and highest pixel score over the given groups."""
        negatives, positives, _ = self._sorted_parts(groups)
        ends = [v for part in (*negatives, *positives) for v in (part.values[0], part.values[-1])]
        return float(min(ends)), float(max(ends))
