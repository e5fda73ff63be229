"""The HTML evaluation report: exact curves, tiles, a self-contained page, and rendering in Chromium."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import chromium_executable
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from draem.report import plots
from draem.report.content import Example, PixelCurve, ReportContent
from draem.report.html import MAX_EXAMPLES, example_tiles, render_report, write_report
from draem.report.overlay import UNIT_SCALE, ColourScale, overlay

SIZE = 32
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def make_example(index: int, defect_type: str, with_prediction: bool = True, size: int = SIZE) -> Example:
    """A tiny example: grey-gradient image, a square defect, a blob-shaped anomaly map."""
    generator = torch.Generator().manual_seed(index)
    image = torch.rand(3, size, size, generator=generator) * 0.2 + 0.4
    mask = torch.zeros(size, size, dtype=torch.bool)
    if defect_type != "good":
        mask[size // 4 : size // 2, size // 4 : size // 2] = True
    anomaly_map = torch.rand(size, size, generator=generator) ** 3
    predicted = anomaly_map >= 0.5 if with_prediction else None
    return Example("example", f"/data/test/{defect_type}/{index:03d}.png", defect_type,
                   float(anomaly_map.max()), image, anomaly_map, mask, predicted)


def make_pixel_curve(rng: np.random.Generator) -> tuple[PixelCurve, np.ndarray, np.ndarray]:
    """Counts on a fine grid from explicit pixel scores, and those scores and labels."""
    labels = rng.random(20_000) < 0.05
    scores = np.clip(rng.normal(0.3 + 0.35 * labels, 0.15), 0, 1)
    grid = np.linspace(0, 1, 1001)
    true_positives = np.array([(scores[labels] >= t).sum() for t in grid])
    false_positives = np.array([(scores[~labels] >= t).sum() for t in grid])
    curve = PixelCurve(grid, true_positives, false_positives, int(labels.sum()), int((~labels).sum()))
    return curve, scores, labels


def make_content(calibrated: bool = True, with_masks: bool = True,
                 false_positives: int = 10) -> ReportContent:
    """Synthetic report content: 30 good and 3 x 10 defective image scores, examples in each gallery."""
    rng = np.random.default_rng(0)
    types = ["good"] * 30 + ["scratch"] * 10 + ["hole"] * 10 + ["crack & dent"] * 10
    labels = np.array([t != "good" for t in types])
    scores = np.where(labels, rng.beta(5, 2, labels.size), rng.beta(2, 5, labels.size)).astype(np.float32)
    row = {"images": 60, "image_auroc": 0.91, "image_ap": 0.93, "image_f1_max": 0.88,
           "pixel_auroc": 0.97 if with_masks else None, "pixel_ap": 0.55 if with_masks else None,
           "aupro": 0.9 if with_masks else None}
    metrics = {"category": "widget", "overall": row,
               "defect_types": {name: {**row, "images": 40} for name in ("scratch", "hole", "crack & dent")}}
    thresholds = {"image": 0.5, "pixel": 0.45, "image_low": 0.0, "image_high": 1.0, "pixel_low": 0.0,
                  "pixel_high": 1.0, "method": "simulated defects", "normal_images": 20,
                  "defective_images": 64} if calibrated else {}
    return ReportContent(
        title="DRAEM on widget <test>", metrics=metrics, image_scores=scores, labels=labels,
        defect_types=types, thresholds=thresholds,
        pixel_curve=make_pixel_curve(rng)[0] if with_masks else None,
        false_positives=[make_example(i, "good", calibrated) for i in range(false_positives)],
        false_negatives=[make_example(20 + i, "scratch", calibrated) for i in range(2)],
        true_detections=[make_example(30, "hole", calibrated), make_example(31, "hole", False),
                         make_example(32, "crack & dent", calibrated)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_curves_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.random(300) + 0.3 * labels, 2)
    fpr, tpr = plots.roc_points(scores, labels)
    reference_fpr, reference_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, reference_fpr)
    np.testing.assert_allclose(tpr, reference_tpr)
    assert plots.trapezoid_area(fpr, tpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    recall, precision = plots.pr_points(scores, labels)
    reference_precision, reference_recall, _ = precision_recall_curve(labels, scores)
    np.testing.assert_allclose(recall, reference_recall[:-1][::-1])
    np.testing.assert_allclose(precision, reference_precision[:-1][::-1])
    reference_ap = average_precision_score(labels, scores)
    assert plots.step_area(recall, precision) == pytest.approx(reference_ap, abs=1e-12)
    step_x, step_y = plots.pr_steps(recall, precision)
    assert plots.trapezoid_area(step_x, step_y) == pytest.approx(reference_ap, abs=1e-12)


def test_operating_point_counts() -> None:
    scores = np.array([0.1, 0.4, 0.5, 0.5, 0.9])
    labels = np.array([0, 1, 0, 1, 1], dtype=bool)
    point = plots.operating_point(scores, labels, 0.5)
    assert (point["tp"], point["fp"], point["fn"], point["tn"]) == (2, 1, 1, 1)
    assert point["tpr"] == pytest.approx(2 / 3) and point["fpr"] == pytest.approx(0.5)
    assert point["precision"] == pytest.approx(2 / 3)


def test_pixel_curves_follow_the_counts() -> None:
    curve, scores, labels = make_pixel_curve(np.random.default_rng(3))
    fpr, tpr = plots.pixel_roc_points(curve)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert plots.trapezoid_area(fpr, tpr) == pytest.approx(roc_auc_score(labels, scores), abs=2e-3)
    recall, precision = plots.pixel_pr_points(curve)
    reference_ap = average_precision_score(labels, scores)
    assert plots.step_area(recall, precision) == pytest.approx(reference_ap, abs=5e-3)
    at_fpr, at_tpr, at_precision = plots.pixel_operating_point(curve, 0.5)
    flagged = scores >= 0.5
    assert at_tpr == pytest.approx((flagged & labels).sum() / labels.sum())
    assert at_fpr == pytest.approx((flagged & ~labels).sum() / (~labels).sum())
    assert at_precision == pytest.approx((flagged & labels).sum() / flagged.sum())


def test_nice_ticks() -> None:
    assert plots.nice_ticks(0, 1, 5) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plots.nice_ticks(0, 23, 4) == [0, 5, 10, 15, 20]
    assert plots.nice_ticks(0.13, 0.87, 6) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert plots.nice_ticks(0, 8, 4) == [0, 2, 4, 6, 8]


def test_tiles_outline_the_truth_and_show_the_prediction() -> None:
    example = make_example(0, "scratch")
    example.image = torch.zeros(3, SIZE, SIZE)
    image, heat, truth, predicted = example_tiles(example)
    border = example.ground_truth.numpy() & ~ndimage.binary_erosion(example.ground_truth.numpy())
    red = (truth[0] > 0.9) & (truth[1] < 0.2) & (truth[2] < 0.2)
    np.testing.assert_array_equal(red.numpy(), border)
    assert torch.equal(image, example.image)
    assert heat.shape == (3, SIZE, SIZE) and heat.max() > 0
    inside = example.predicted_mask.numpy() & ~border
    assert predicted[:, torch.from_numpy(inside)].min() > 0.7
    assert predicted[:, ~example.predicted_mask & ~torch.from_numpy(border)].max() < 0.01
    assert example_tiles(make_example(1, "good", with_prediction=False))[3] is None


def test_tiles_are_thumbnails() -> None:
    example = make_example(0, "hole", size=300)
    example.image = example.image[:, :, :150]
    example.anomaly_map = example.anomaly_map[:, :150]
    example.ground_truth = example.ground_truth[:, :150]
    example.predicted_mask = example.predicted_mask[:, :150]
    tiles = example_tiles(example)
    assert [tuple(tile.shape) for tile in tiles] == [(3, 256, 128)] * 4


def test_report_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.html"
    path.write_text("previous report")

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("draem.files.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(path, make_content())
    assert path.read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    monkeypatch.undo()
    assert write_report(path, make_content()) == path
    assert path.read_text().startswith("<!DOCTYPE html>")


def test_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    page = write_report(tmp_path / "out" / "report.html", make_content()).read_text()
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "<link" not in page and "<iframe" not in page and "@import" not in page
    for attribute in re.findall(r'\b(?:src|href)="([^"]*)"', page):
        assert attribute.startswith(("data:image/png;base64,", "#")), attribute[:60]
    assert len(re.findall(r"<script\b", page)) == 1 and "<script>" in page
    for section in ("summary", "metrics", "curves", "scores", "false-positives", "false-negatives",
                    "true-detections"):
        assert f'<section id="{section}">' in page
    assert "DRAEM on widget &lt;test&gt;" in page and "crack &amp; dent" in page
    assert "simulated defects" in page and "uncalibrated" not in page
    # 8 of 10 false positives, 2 false negatives, 3 detections of which one lacks a predicted mask.
    shown = MAX_EXAMPLES + 2 + 3
    assert len(re.findall(r"<img\b", page)) == 4 * shown - 1
    assert page.count("no threshold") == 1
    for encoded in DATA_URI.findall(page):
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            assert image.format == "PNG" and max(image.size) <= 256
    svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    assert len(svgs) == 6
    for svg in svgs:
        assert ET.fromstring(svg).tag == "svg"
    assert "AUROC 0.970" in page and "AP 0.550" in page


def test_uncalibrated_report_without_masks(tmp_path: Path) -> None:
    page = render_report(make_content(calibrated=False, with_masks=False, false_positives=3))
    assert "uncalibrated" in page and "best-F1 cut" in page
    assert page.count("no ground-truth masks of defects") == 2
    assert len(re.findall(r"<svg\b", page)) == 4
    assert len(re.findall(r'<td class="na">n/a</td>', page)) == 3 * 4
    assert len(re.findall(r"<img\b", page)) == 3 * (3 + 2 + 3)
    assert page.count("no threshold") == 3 + 2 + 3


def _render(browser: str, page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after load and the console lines Chromium logged for a page."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout, [line for line in done.stderr.splitlines() if "CONSOLE" in line]


def _console_errors(lines: list[str]) -> list[str]:
    return [line for line in lines if re.search(r"error|uncaught|failed|refused", line, flags=re.I)]


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium_executable()
    page = write_report(tmp_path / "report.html", make_content())
    dom, console = _render(browser, page, tmp_path / "profile")
    assert 'data-images-ok="true"' in dom
    assert _console_errors(console) == []
    broken = tmp_path / "broken.html"
    broken.write_text(render_report(make_content()).replace("base64,", "base64,AAAA", 1)
                      .replace("</body>", "<script>undefinedFunction();</script></body>"))
    dom, console = _render(browser, broken, tmp_path / "profile")
    assert 'data-images-ok="false"' in dom
    assert any("Uncaught" in line for line in _console_errors(console))


def test_the_colour_scale_follows_the_runs_calibration() -> None:
    scale = ColourScale.of({"pixel_low": 0.02, "pixel": 0.06, "pixel_high": 0.10, "image": 0.1})
    values = torch.tensor([0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.5])
    torch.testing.assert_close(scale(values), torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]))
    assert ColourScale.of({}) == UNIT_SCALE and torch.equal(UNIT_SCALE(torch.tensor([0.3])), torch.tensor([0.3]))


def test_a_map_in_a_small_range_is_coloured_hot_where_it_passes_the_threshold() -> None:
    """RIAD-like maps live in [0.02, 0.1]: on the unit scale their overlay is uniformly cold; on the run's
    calibrated scale the defect is hot and the background cold."""
    anomaly_map = torch.full((16, 16), 0.03)
    anomaly_map[4:8, 4:8] = 0.09
    image = torch.full((3, 16, 16), 0.5)
    scale = ColourScale.of({"pixel_low": 0.02, "pixel": 0.06, "pixel_high": 0.10})
    unit, calibrated = overlay(image, anomaly_map), overlay(image, anomaly_map, scale)

    def warmth(tile: torch.Tensor) -> torch.Tensor:  # the heat ramp runs from blue to red
        return tile[0] - tile[2]

    assert (warmth(unit)[4:8, 4:8] - warmth(unit)[0:4, 0:4]).mean() < 0.1
    assert (warmth(calibrated)[4:8, 4:8] - warmth(calibrated)[0:4, 0:4]).mean() > 0.3
