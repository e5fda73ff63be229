"""Exact ROC / PR curves and hand-written inline SVG charts (curves, histograms, strip plots)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

import numpy as np

from draem.report.content import PixelCurve

GOOD_COLOUR = "#3b75af"
DEFECT_COLOUR = "#e1812c"
THRESHOLD_COLOUR = "#c0392b"
CHANCE_COLOUR = "#9aa1a9"
GRID_COLOUR = "#e3e6ea"
AXIS_COLOUR = "#5f6670"
TEXT_COLOUR = "#2c3138"
CHAR_WIDTH = 6.6


@dataclass
class Series:
    """One line of a chart: points in data coordinates, drawn in order."""

    label: str
    x: np.ndarray
    y: np.ndarray
    colour: str
    dashed: bool = False


@dataclass
class Marker:
    """A labelled dot on a chart, e.g. the operating point at the decision threshold."""

    label: str
    x: float
    y: float
    colour: str = THRESHOLD_COLOUR


@dataclass(frozen=True)
class Frame:
    """A plotting area inside an SVG canvas and the data ranges it maps."""

    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def x(self, value: float) -> float:
        low, high = self.x_range
        return self.left + (value - low) / (high - low) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        low, high = self.y_range
        span = self.height - self.top - self.bottom
        return self.height - self.bottom - (value - low) / (high - low) * span


def _sorted_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in descending order with true and false positives when predicting score >= each."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="stable")
    ranked, ranked_labels = scores[order], labels[order]
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]
    true_positives = np.cumsum(ranked_labels)[last_of_tie]
    false_positives = np.cumsum(~ranked_labels)[last_of_tie]
    return ranked[last_of_tie], true_positives, false_positives


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROC vertices (false positive rate, true positive rate) from (0, 0) over every distinct score."""
    _, true_positives, false_positives = _sorted_counts(scores, labels)
    fpr = np.r_[0.0, false_positives / false_positives[-1]]
    tpr = np.r_[0.0, true_positives / true_positives[-1]]
    return fpr, tpr


def pr_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (recall, precision) at every distinct score, from the highest score down."""
    _, true_positives, false_positives = _sorted_counts(scores, labels)
    return true_positives / true_positives[-1], true_positives / (true_positives + false_positives)


def trapezoid_area(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a polyline through the points (x ascending)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def step_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """Average precision: each precision held over the recall gained at its threshold."""
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_steps(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the PR step curve whose area is step_area: precision p_k over (r_(k-1), r_k]."""
    x = np.repeat(np.r_[0.0, recall], 2)[1:-1]
    y = np.repeat(precision, 2)
    return x, y


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Rates and counts when predicting defective for score >= threshold."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    flagged = scores >= threshold
    tp, fp = int((flagged & labels).sum()), int((flagged & ~labels).sum())
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return {"tp": tp, "fp": fp, "fn": positives - tp, "tn": negatives - fp,
            "tpr": tp / positives if positives else math.nan,
            "fpr": fp / negatives if negatives else math.nan,
            "precision": tp / (tp + fp) if tp + fp else math.nan}


def pixel_roc_points(curve: PixelCurve) -> tuple[np.ndarray, np.ndarray]:
    """Pixel ROC vertices from the counts on the threshold grid, closed at (0, 0) and (1, 1)."""
    order = np.argsort(-np.asarray(curve.thresholds, dtype=np.float64))
    fpr = np.asarray(curve.false_positives, dtype=np.float64)[order] / max(curve.negatives, 1)
    tpr = np.asarray(curve.true_positives, dtype=np.float64)[order] / max(curve.positives, 1)
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, tpr, 1.0]


def pixel_pr_points(curve: PixelCurve) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (recall, precision) on the threshold grid, highest threshold first; empty predictions skipped."""
    order = np.argsort(-np.asarray(curve.thresholds, dtype=np.float64))
    tp = np.asarray(curve.true_positives, dtype=np.float64)[order]
    fp = np.asarray(curve.false_positives, dtype=np.float64)[order]
    kept = tp + fp > 0
    return tp[kept] / max(curve.positives, 1), tp[kept] / (tp[kept] + fp[kept])


def pixel_operating_point(curve: PixelCurve, threshold: float) -> tuple[float, float, float]:
    """(fpr, tpr, precision) at a threshold, interpolated between the grid's counts."""
    grid = np.asarray(curve.thresholds, dtype=np.float64)
    order = np.argsort(grid)
    tp = float(np.interp(threshold, grid[order], np.asarray(curve.true_positives, dtype=np.float64)[order]))
    fp = float(np.interp(threshold, grid[order], np.asarray(curve.false_positives, dtype=np.float64)[order]))
    precision = tp / (tp + fp) if tp + fp > 0 else math.nan
    return fp / max(curve.negatives, 1), tp / max(curve.positives, 1), precision


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda step: abs((high - low) / step - count))
    first = math.ceil(low / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(high / step + 1e-9) + 1)]


def format_number(value: float, ticks: list[float] | None = None) -> str:
    """A tick label with as many decimals as the tick step needs, or 4 significant digits."""
    if ticks is not None and len(ticks) > 1:
        decimals = max(0, -math.floor(math.log10(ticks[1] - ticks[0]) + 1e-9))
        return f"{value:.{decimals}f}"
    return f"{value:.4g}"


def _text(x: float, y: float, content: str, anchor: str = "middle", size: int = 12,
          colour: str = TEXT_COLOUR, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{colour}"{extra}>{escape(content)}</text>')


def _path(xs: np.ndarray, ys: np.ndarray, colour: str, width: float = 2.0, dashed: bool = False) -> str:
    commands = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    return (f'<polyline points="{commands}" fill="none" stroke="{colour}" stroke-width="{width}" '
            f'stroke-linejoin="round"{dash}/>')


def _axes(frame: Frame, x_ticks: list[float], y_ticks: list[float], x_label: str, y_label: str) -> list[str]:
    """Grid lines, tick labels, the plot border and both axis titles."""
    parts = []
    x0, x1 = frame.left, frame.width - frame.right
    y0, y1 = frame.top, frame.height - frame.bottom
    for tick in x_ticks:
        x = frame.x(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="{GRID_COLOUR}"/>')
        parts.append(f'<line x1="{x:.1f}" y1="{y1:.1f}" x2="{x:.1f}" y2="{y1 + 5:.1f}" '
                     f'stroke="{AXIS_COLOUR}"/>')
        parts.append(_text(x, y1 + 18, format_number(tick, x_ticks), size=11, colour=AXIS_COLOUR))
    for tick in y_ticks:
        y = frame.y(tick)
        parts.append(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{GRID_COLOUR}"/>')
        parts.append(f'<line x1="{x0 - 5:.1f}" y1="{y:.1f}" x2="{x0:.1f}" y2="{y:.1f}" '
                     f'stroke="{AXIS_COLOUR}"/>')
        parts.append(_text(x0 - 8, y + 4, format_number(tick, y_ticks), anchor="end", size=11,
                           colour=AXIS_COLOUR))
    parts.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" '
                 f'fill="none" stroke="{AXIS_COLOUR}"/>')
    parts.append(_text((x0 + x1) / 2, frame.height - 8, x_label, size=12))
    if y_label:
        middle = (y0 + y1) / 2
        parts.append(_text(16, middle, y_label, size=12, extra=f' transform="rotate(-90 16 {middle:.1f})"'))
    return parts


def _swatch(kind: str, colour: str, x: float, cy: float, size: float) -> str:
    """A legend key of kind line, dash, box or dot, size wide, starting at x on the line cy."""
    if kind == "box":
        return (f'<rect x="{x:.1f}" y="{cy - 6:.1f}" width="{size}" height="12" fill="{colour}" '
                f'fill-opacity="0.55" stroke="{colour}"/>')
    if kind == "dot":
        return (f'<circle cx="{x + size / 2:.1f}" cy="{cy:.1f}" r="4.5" fill="{colour}" '
                'stroke="#ffffff" stroke-width="1.5"/>')
    dash = ' stroke-dasharray="5 4"' if kind == "dash" else ""
    return (f'<line x1="{x:.1f}" y1="{cy:.1f}" x2="{x + size:.1f}" y2="{cy:.1f}" stroke="{colour}" '
            f'stroke-width="2.5"{dash}/>')


def _legend(entries: list[tuple[str, str, str]], frame: Frame, corner: str) -> list[str]:
    """Legend rows of (label, colour, kind): boxed in a corner of the frame, or in one line above it."""
    swatch = 22
    if corner == "above":
        parts, x, cy = [], frame.left, frame.top - 14
        for label, colour, kind in entries:
            parts.append(_swatch(kind, colour, x, cy, swatch))
            parts.append(_text(x + swatch + 6, cy + 4, label, anchor="start", size=12))
            x += swatch + 6 + CHAR_WIDTH * len(label) + 18
        return parts
    row_height = 18
    width = 16 + swatch + 6 + CHAR_WIDTH * max(len(label) for label, _, _ in entries)
    height = 8 + row_height * len(entries)
    right_edge, bottom_edge = frame.width - frame.right - 8, frame.height - frame.bottom - 8
    x = right_edge - width if corner.endswith("right") else frame.left + 8
    y = bottom_edge - height if corner.startswith("lower") else frame.top + 8
    parts = [f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" rx="4" '
             f'fill="#ffffff" fill-opacity="0.92" stroke="{GRID_COLOUR}"/>']
    for row, (label, colour, kind) in enumerate(entries):
        cy = y + 4 + row_height * row + row_height / 2
        parts.append(_swatch(kind, colour, x + 8, cy, swatch))
        parts.append(_text(x + 8 + swatch + 6, cy + 4, label, anchor="start", size=12))
    return parts


def _svg(frame: Frame, parts: list[str], label: str) -> str:
    return (f'<svg viewBox="0 0 {frame.width:.0f} {frame.height:.0f}" role="img" '
            f'aria-label="{escape(label)}">' + "".join(parts) + "</svg>")


def curve_chart(series: list[Series], x_label: str, y_label: str, legend_corner: str = "lower right",
                markers: list[Marker] | None = None, width: int = 480, height: int = 360) -> str:
    """A unit-square line chart (ROC or PR) with grid, ticks, axis titles and a legend."""
    frame = Frame(width, height, 58, 16, 14, 46, (0.0, 1.0), (0.0, 1.0))
    ticks = [k / 5 for k in range(6)]
    parts = _axes(frame, ticks, ticks, x_label, y_label)
    for line in series:
        xs = np.array([frame.x(v) for v in line.x])
        ys = np.array([frame.y(v) for v in line.y])
        parts.append(_path(xs, ys, line.colour, 1.5 if line.dashed else 2.2, line.dashed))
    entries = [(line.label, line.colour, "dash" if line.dashed else "line") for line in series]
    for marker in markers or []:
        if math.isfinite(marker.x) and math.isfinite(marker.y):
            parts.append(f'<circle cx="{frame.x(marker.x):.1f}" cy="{frame.y(marker.y):.1f}" r="5" '
                         f'fill="{marker.colour}" stroke="#ffffff" stroke-width="1.5"/>')
            entries.append((marker.label, marker.colour, "dot"))
    parts.extend(_legend(entries, frame, legend_corner))
    return _svg(frame, parts, f"{y_label} against {x_label}")


def _score_range(scores: np.ndarray, threshold: float | None) -> tuple[float, float]:
    values = np.asarray(scores, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if threshold is not None and math.isfinite(threshold):
        low, high = min(low, threshold), max(high, threshold)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.04
    return low - pad, high + pad


def _threshold_line(frame: Frame, threshold: float | None) -> list[str]:
    if threshold is None or not math.isfinite(threshold):
        return []
    x = frame.x(threshold)
    return [f'<line x1="{x:.1f}" y1="{frame.top:.1f}" x2="{x:.1f}" y2="{frame.height - frame.bottom:.1f}" '
            f'stroke="{THRESHOLD_COLOUR}" stroke-width="2" stroke-dasharray="6 4"/>']


def histogram_chart(good: np.ndarray, defective: np.ndarray, threshold: float | None,
                    threshold_label: str = "threshold", width: int = 560, height: int = 320) -> str:
    """Overlaid histograms of good and defective image scores on shared bins, with the threshold line."""
    both = np.r_[np.asarray(good, dtype=np.float64), np.asarray(defective, dtype=np.float64)]
    x_range = _score_range(both, threshold)
    bins = int(np.clip(round(math.sqrt(both.size) * 1.5), 10, 40))
    edges = np.linspace(float(both.min()), float(both.max()), bins + 1)
    if edges[-1] - edges[0] < 1e-12:
        edges = np.linspace(x_range[0], x_range[1], bins + 1)
    good_counts = np.histogram(good, edges)[0]
    defect_counts = np.histogram(defective, edges)[0]
    top = max(int(good_counts.max(initial=0)), int(defect_counts.max(initial=0)), 1)
    y_ticks = nice_ticks(0, max(top, 4), 4)
    if y_ticks[-1] < top:
        y_ticks.append(2 * y_ticks[-1] - y_ticks[-2])
    frame = Frame(width, height, 58, 16, 36, 46, x_range, (0.0, y_ticks[-1]))
    parts = _axes(frame, nice_ticks(*x_range, 6), y_ticks, "image anomaly score", "images")
    for counts, colour in ((good_counts, GOOD_COLOUR), (defect_counts, DEFECT_COLOUR)):
        for left, right, count in zip(edges[:-1], edges[1:], counts, strict=True):
            if count:
                x, y = frame.x(left), frame.y(count)
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{frame.x(right) - x:.1f}" '
                             f'height="{frame.y(0) - y:.1f}" fill="{colour}" fill-opacity="0.5" '
                             f'stroke="{colour}" stroke-width="1"/>')
    parts.extend(_threshold_line(frame, threshold))
    entries = [(f"good ({len(good)})", GOOD_COLOUR, "box"),
               (f"defective ({len(defective)})", DEFECT_COLOUR, "box")]
    if threshold is not None and math.isfinite(threshold):
        entries.append((f"{threshold_label} {threshold:.4g}", THRESHOLD_COLOUR, "dash"))
    parts.extend(_legend(entries, frame, "above"))
    return _svg(frame, parts, "histogram of image scores")


def strip_chart(scores: np.ndarray, groups: list[str], group_order: list[str], defective: list[bool],
                threshold: float | None, threshold_label: str = "threshold", width: int = 560,
                seed: int = 0) -> str:
    """One row of jittered dots per group (defect type) along the score axis, with the threshold line."""
    scores = np.asarray(scores, dtype=np.float64)
    row_height = min(max(230 / len(group_order), 26), 60)
    names = [f"{name} ({groups.count(name)})" for name in group_order]
    label_width = 16 + CHAR_WIDTH * max(len(name) for name in names)
    height = 36 + 46 + row_height * len(group_order)
    x_range = _score_range(scores, threshold)
    frame = Frame(width, height, max(label_width, 58), 16, 36, 46, x_range, (0.0, float(len(group_order))))
    parts = []
    for row, name in enumerate(names):
        centre = frame.y(len(group_order) - row - 0.5)
        if row % 2:
            parts.append(f'<rect x="{frame.left:.1f}" y="{centre - row_height / 2:.1f}" '
                         f'width="{width - frame.left - frame.right:.1f}" height="{row_height:.1f}" '
                         'fill="#f6f7f9"/>')
        parts.append(_text(frame.left - 8, centre + 4, name, anchor="end", size=12))
    parts.extend(_axes(frame, nice_ticks(*x_range, 6), [], "image anomaly score", ""))
    jitter = np.random.default_rng(seed).uniform(-0.3, 0.3, scores.size)
    row_of = {name: row for row, name in enumerate(group_order)}
    for score, group, is_defective, shift in zip(scores, groups, defective, jitter, strict=True):
        centre = len(group_order) - row_of[group] - 0.5 + shift
        colour = DEFECT_COLOUR if is_defective else GOOD_COLOUR
        parts.append(f'<circle cx="{frame.x(score):.1f}" cy="{frame.y(centre):.1f}" r="3.2" fill="{colour}" '
                     'fill-opacity="0.7"/>')
    parts.extend(_threshold_line(frame, threshold))
    entries = [("good", GOOD_COLOUR, "dot"), ("defective", DEFECT_COLOUR, "dot")]
    if threshold is not None and math.isfinite(threshold):
        entries.append((f"{threshold_label} {threshold:.4g}", THRESHOLD_COLOUR, "dash"))
    parts.extend(_legend(entries, frame, "above"))
    return _svg(frame, parts, "image scores per defect type")
