"""The evaluation report: one self-contained HTML page (embedded PNGs, inline SVG and CSS, no URLs)."""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path

import numpy as np
import torch

from draem.files import write_text
from draem.metrics import f1_max
from draem.report import plots
from draem.report.content import Example, PixelCurve, ReportContent
from draem.report.overlay import UNIT_SCALE, ColourScale, mask_outline, overlay, png_bytes, to_pil

GOOD = "good"
MAX_EXAMPLES = 8
THUMBNAIL_SIZE = 256
SMALL_TILE = 160
PREDICTION_COLOUR = (1.0, 1.0, 1.0)
TRUTH_COLOUR = (1.0, 0.1, 0.1)
METRIC_COLUMNS = (("image_auroc", "Image AUROC"), ("image_ap", "Image AP"), ("image_f1_max", "Image F1 max"),
                  ("pixel_auroc", "Pixel AUROC"), ("pixel_ap", "Pixel AP"), ("aupro", "AUPRO"))
TILE_LABELS = ("image", "anomaly map overlay", "ground truth (red outline)",
               "predicted mask (white), truth outlined")
GALLERIES = (
    ("false_positives", "Worst false positives",
     "Good images scored highest: what the model mistakes for a defect."),
    ("false_negatives", "Worst false negatives",
     "Defective images scored lowest: defects the model misses at this threshold."),
    ("true_detections", "True detections", "A sample of defective images the model flags correctly."),
)

STYLE = """
:root { --ink: #22272e; --muted: #5f6670; --line: #e3e6ea; --panel: #ffffff; --page: #f3f5f8;
        --good: #3b75af; --defect: #e1812c; --alarm: #c0392b; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--page); color: var(--ink);
       font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
header.top { background: #1f2a37; color: #f4f6f8; }
header.top .inner { max-width: 1240px; margin: 0 auto; padding: 22px 28px 18px; }
header.top h1 { margin: 0 0 4px; font-size: 26px; font-weight: 650; letter-spacing: .2px; }
header.top .meta { color: #b9c3ce; font-size: 13px; word-break: break-all; }
nav { margin-top: 12px; display: flex; flex-wrap: wrap; gap: 6px 18px; font-size: 13px; }
nav a { color: #d7e3f0; text-decoration: none; border-bottom: 1px dotted #7e8da0; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
          padding: 18px 22px 20px; margin-top: 20px; }
h2 { font-size: 19px; margin: 0 0 4px; }
h3 { font-size: 15px; margin: 0 0 6px; }
p.lead { color: var(--muted); margin: 0 0 14px; }
.cards { display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: #fafbfc; }
.card .name { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .5px; }
.card .value { font-size: 28px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .value.na { color: #a2a9b1; }
.decision { display: grid; grid-template-columns: 1.3fr 1fr; gap: 22px; margin-top: 16px;
            align-items: start; }
.note { border-left: 4px solid #d4a017; background: #fdf8e6; padding: 8px 12px; border-radius: 4px; }
.facts { margin: 0; display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .4px;
           border-bottom: 2px solid #cfd5dc; }
tr.overall td { font-weight: 650; background: #f5f8fb; }
td.na { color: #a2a9b1; }
table.confusion { width: auto; }
table.confusion td, table.confusion th { text-align: center; min-width: 110px; }
table.confusion td.hit { background: #e8f3ea; }
table.confusion td.miss { background: #fbeaea; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 18px 26px; }
figure { margin: 0; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 2px; }
.skip { color: var(--muted); font-style: italic; }
.example, .gallery-head { display: grid; grid-template-columns: 170px repeat(4, minmax(0, 230px));
                          gap: 10px; align-items: start; }
.example { border-top: 1px solid var(--line); padding: 10px 0; }
.gallery-head { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .4px;
                padding-bottom: 4px; }
.caption { display: flex; flex-direction: column; gap: 4px; padding-top: 2px; }
.caption .rank { color: var(--muted); font-size: 12px; }
.caption .file { font-weight: 600; word-break: break-all; }
.tag { font-size: 12px; padding: 1px 8px; border-radius: 10px; background: #eef1f5; color: var(--ink); }
.tag.defect { background: #fcebdc; color: #8a4a10; }
.tag.good { background: #e3edf7; color: #214e7a; }
.score { font-variant-numeric: tabular-nums; color: var(--muted); }
.score strong { color: var(--ink); font-size: 16px; }
.tile img, .tile .empty { width: 100%; aspect-ratio: 1; display: block; border-radius: 4px;
                          background: #11161c; object-fit: contain; }
.tile img.small { image-rendering: pixelated; }
.tile .empty { display: flex; align-items: center; justify-content: center; color: #c2c9d1;
               font-size: 13px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 24px; }
@media (max-width: 900px) { .cards { grid-template-columns: repeat(3, 1fr); }
  .charts, .decision { grid-template-columns: 1fr; }
  .example, .gallery-head { grid-template-columns: repeat(4, minmax(0, 1fr)); }
  .caption, .gallery-head > div:first-child { grid-column: 1 / -1; } }
"""

IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.every(function (image) { return image.complete && image.naturalWidth > 0; });
  document.body.dataset.imagesOk = loaded ? "true" : "false";
});
"""


def _format(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _percent(part: int, whole: int) -> str:
    return "n/a" if whole == 0 else f"{100 * part / whole:.1f} %"


def _score_colour(value: float | None) -> str:
    """A pale background from red (0.5 and below) through amber to green (1.0) for a metric cell."""
    if value is None or not math.isfinite(value):
        return ""
    hue = 120 * min(max((value - 0.5) / 0.5, 0.0), 1.0) ** 1.5
    return f' style="background: hsl({hue:.0f}, 65%, 93%)"'


def _thumbnail(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shrink a (C, H, W) tensor in [0, 1] with antialiasing so its longer side is at most `size`."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    if scale >= 1:
        return image
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    return torch.nn.functional.interpolate(image[None].float(), target, mode="bilinear", antialias=True,
                                           align_corners=False)[0].clamp(0, 1)


def example_tiles(example: Example, scale: ColourScale = UNIT_SCALE, size: int = THUMBNAIL_SIZE
                  ) -> list[torch.Tensor | None]:
    """RGB tiles: image, heatmap overlay, ground-truth outline, predicted mask (None without threshold)."""
    image = example.image.float()
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    image = _thumbnail(image, size)
    target = image.shape[-2:]

    def fitted_mask(mask: torch.Tensor) -> torch.Tensor:
        plane = mask.reshape(mask.shape[-2:]).float()[None]
        return torch.nn.functional.interpolate(plane[None], target, mode="nearest")[0, 0] >= 0.5

    anomaly_map = example.anomaly_map.reshape(example.anomaly_map.shape[-2:]).float()
    anomaly_map = _thumbnail(anomaly_map[None], size)[0]
    truth = fitted_mask(example.ground_truth)
    tiles: list[torch.Tensor | None] = [image, overlay(image, anomaly_map, scale),
                                        mask_outline(image, truth, TRUTH_COLOUR)]
    if example.predicted_mask is None:
        tiles.append(None)
    else:
        predicted = fitted_mask(example.predicted_mask)
        colour = torch.tensor(PREDICTION_COLOUR)[:, None, None]
        canvas = 0.22 * image + 0.78 * predicted[None].float() * colour
        tiles.append(mask_outline(canvas, truth, TRUTH_COLOUR))
    return tiles


def _data_uri(tile: torch.Tensor) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(to_pil(tile))).decode("ascii")


def _short_path(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def _example_html(index: int, example: Example, scale: ColourScale) -> str:
    cells = []
    for tile, label in zip(example_tiles(example, scale), TILE_LABELS, strict=True):
        if tile is None:
            cells.append('<div class="tile"><div class="empty">no threshold</div></div>')
        else:
            small = ' class="small"' if max(tile.shape[-2:]) < SMALL_TILE else ""
            image = f'<img{small} src="{_data_uri(tile)}" alt="{escape(label)}">'
            cells.append(f'<div class="tile">{image}</div>')
    kind = "good" if example.defect_type == GOOD else "defect"
    return (f'<div class="example"><div class="caption"><div class="rank">#{index}</div>'
            f'<div class="file" title="{escape(example.path)}">{escape(_short_path(example.path))}</div>'
            f'<div><span class="tag {kind}">{escape(example.defect_type)}</span></div>'
            f'<div class="score">score <strong>{example.score:.4g}</strong></div></div>'
            f'{"".join(cells)}</div>')


def _cards(overall: dict) -> str:
    cards = []
    for key, name in METRIC_COLUMNS:
        value = overall.get(key)
        text = _format(value)
        css = "value na" if text == "n/a" else "value"
        cards.append(f'<div class="card"><div class="name">{name}</div><div class="{css}">{text}</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>'


def _image_threshold(content: ReportContent) -> tuple[float | None, str]:
    """The calibrated image threshold, else the best-F1 cut on this test set, with a name for it."""
    if content.thresholds.get("image") is not None:
        return float(content.thresholds["image"]), "threshold"
    labels = np.asarray(content.labels).astype(bool)
    if labels.all() or not labels.any():
        return None, "threshold"
    return f1_max(np.asarray(content.image_scores, dtype=np.float32), labels)[1], "best-F1 cut"


def _decision(content: ReportContent, threshold: float | None, threshold_name: str) -> str:
    calibration = content.thresholds
    if calibration:
        rows = [("Image threshold", f"{calibration['image']:.4g}")]
        if calibration.get("pixel") is not None:
            rows.append(("Pixel threshold", f"{calibration['pixel']:.4g}"))
        rows.append(("Calibrated by", str(calibration.get("method", "unknown method"))))
        if "normal_images" in calibration:
            rows.append(("Calibration set", f"{calibration['normal_images']} normal, "
                                            f"{calibration.get('defective_images', 0)} defective images"))
        facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
        left = f'<h3>Decision thresholds</h3><dl class="facts">{facts}</dl>'
    else:
        cut = "" if threshold is None else (
            f" Counts below use the best-F1 cut on this test set ({threshold:.4g}), which is optimistic: "
            "it was chosen with the test labels.")
        left = ('<h3>Decision thresholds</h3><p class="note">This run is <strong>uncalibrated</strong>: '
                f"no decision thresholds are stored with the model.{cut} "
                "Run <code>draem calibrate</code> to set thresholds on labelled validation images.</p>")
    if threshold is None:
        return f'<div class="decision"><div>{left}</div><div></div></div>'
    point = plots.operating_point(content.image_scores, content.labels, threshold)
    defective, good = point["tp"] + point["fn"], point["tn"] + point["fp"]
    right = (
        f"<h3>Images at {threshold_name} {threshold:.4g}</h3>"
        '<table class="confusion"><thead><tr><th></th><th>flagged defective</th><th>passed as good</th></tr>'
        f'</thead><tbody><tr><th>defective ({defective})</th><td class="hit">{point["tp"]}</td>'
        f'<td class="miss">{point["fn"]}</td></tr>'
        f'<tr><th>good ({good})</th><td class="miss">{point["fp"]}</td>'
        f'<td class="hit">{point["tn"]}</td></tr></tbody></table>'
        f'<p class="lead" style="margin-top:8px">Catches {point["tp"]} of {defective} defective images '
        f'({_percent(point["tp"], defective)}); falsely rejects {point["fp"]} of {good} good images '
        f'({_percent(point["fp"], good)}).</p>')
    return f'<div class="decision"><div>{left}</div><div>{right}</div></div>'


def _note(text: str) -> str:
    return f'<p class="lead">{escape(text)}</p>' if text else ""


def _metrics_table(metrics: dict) -> str:
    header = "".join(f"<th>{name}</th>" for _, name in METRIC_COLUMNS)
    rows = [("all defect types", metrics.get("overall", {}), "overall"),
            *((name, values, "") for name, values in metrics.get("defect_types", {}).items())]
    body = []
    for name, values, css in rows:
        cells = []
        for key, _ in METRIC_COLUMNS:
            value = values.get(key)
            text = _format(value)
            style = ' class="na"' if text == "n/a" else _score_colour(value)
            cells.append(f"<td{style}>{text}</td>")
        body.append(f'<tr class="{css}"><td>{escape(name)}</td><td>{values.get("images", "")}</td>'
                    f'{"".join(cells)}</tr>')
    return (f"<table><thead><tr><th>defect type</th><th>images</th>{header}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            '<p class="lead" style="margin-top:8px">Each defect type is scored against all good test images. '
            "Pixel metrics are n/a when the test set has no ground-truth masks.</p>")


def _figure(title: str, svg: str, caption: str = "") -> str:
    note = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f"<figure><h3>{escape(title)}</h3>{svg}{note}</figure>"


def _skipped(title: str, reason: str) -> str:
    return f'<figure><h3>{escape(title)}</h3><p class="skip">{escape(reason)}</p></figure>'


def _chance_diagonal() -> plots.Series:
    unit = np.array([0.0, 1.0])
    return plots.Series("chance", unit, unit, plots.CHANCE_COLOUR, dashed=True)


def _image_curves(scores: np.ndarray, labels: np.ndarray, threshold: float | None,
                  threshold_name: str) -> str:
    if labels.all() or not labels.any():
        reason = "Needs both good and defective test images."
        return _skipped("Image ROC", reason) + _skipped("Image precision-recall", reason)
    fpr, tpr = plots.roc_points(scores, labels)
    recall, precision = plots.pr_points(scores, labels)
    roc_markers, pr_markers = [], []
    if threshold is not None:
        point = plots.operating_point(scores, labels, threshold)
        label = f"at {threshold_name} {threshold:.4g}"
        roc_markers.append(plots.Marker(label, point["fpr"], point["tpr"]))
        pr_markers.append(plots.Marker(label, point["tpr"], point["precision"]))
    roc = plots.curve_chart(
        [plots.Series(f"ROC, AUROC {plots.trapezoid_area(fpr, tpr):.3f}", fpr, tpr, plots.GOOD_COLOUR),
         _chance_diagonal()],
        "false positive rate (good images flagged)", "true positive rate (defects caught)", "lower right",
        roc_markers)
    prevalence = float(labels.mean())
    step_x, step_y = plots.pr_steps(recall, precision)
    pr = plots.curve_chart(
        [plots.Series(f"PR, AP {plots.step_area(recall, precision):.3f}", step_x, step_y,
                      plots.DEFECT_COLOUR),
         plots.Series(f"chance, {prevalence:.2f}", np.array([0.0, 1.0]), np.array([prevalence] * 2),
                      plots.CHANCE_COLOUR, dashed=True)],
        "recall (defects caught)", "precision (flags that are defects)", "lower left", pr_markers)
    count = f"{int(labels.sum())} defective and {int((~labels).sum())} good images, every distinct score."
    return _figure("Image ROC", roc, count) + _figure("Image precision-recall", pr, count)


def _pixel_curves(curve: PixelCurve | None, overall: dict, pixel_threshold: float | None) -> str:
    if curve is None or curve.positives == 0 or curve.negatives == 0:
        reason = "No pixel curves: the test set has no ground-truth masks of defects."
        return _skipped("Pixel ROC", reason) + _skipped("Pixel precision-recall", reason)
    fpr, tpr = plots.pixel_roc_points(curve)
    recall, precision = plots.pixel_pr_points(curve)
    auroc = overall.get("pixel_auroc")
    auroc = plots.trapezoid_area(fpr, tpr) if auroc is None else auroc
    roc_markers, pr_markers = [], []
    if pixel_threshold is not None:
        at_fpr, at_tpr, at_precision = plots.pixel_operating_point(curve, pixel_threshold)
        label = f"at pixel threshold {pixel_threshold:.4g}"
        roc_markers.append(plots.Marker(label, at_fpr, at_tpr))
        pr_markers.append(plots.Marker(label, at_tpr, at_precision))
    roc = plots.curve_chart(
        [plots.Series(f"ROC, AUROC {auroc:.3f}", fpr, tpr, plots.GOOD_COLOUR),
         _chance_diagonal()],
        "false positive rate (normal pixels)", "true positive rate (defect pixels)", "lower right",
        roc_markers)
    prevalence = curve.positives / (curve.positives + curve.negatives)
    ap = overall.get("pixel_ap")
    pr_label = "PR" if ap is None else f"PR, AP {ap:.3f}"
    pr = plots.curve_chart(
        [plots.Series(pr_label, recall, precision, plots.DEFECT_COLOUR),
         plots.Series(f"chance, {prevalence:.3f}", np.array([0.0, 1.0]), np.array([prevalence] * 2),
                      plots.CHANCE_COLOUR, dashed=True)],
        "recall (defect pixels found)", "precision (flagged pixels in defects)", "lower left", pr_markers)
    note = (f"{curve.positives:,} defect and {curve.negatives:,} normal pixels, "
            f"sampled at {len(curve.thresholds)} thresholds.")
    return _figure("Pixel ROC", roc, note) + _figure("Pixel precision-recall", pr, note)


def _score_plots(content: ReportContent, threshold: float | None, threshold_name: str) -> str:
    scores = np.asarray(content.image_scores, dtype=np.float64)
    labels = np.asarray(content.labels).astype(bool)
    if scores.size == 0:
        return '<p class="skip">No test images were scored.</p>'
    histogram = plots.histogram_chart(scores[~labels], scores[labels], threshold, threshold_name)
    order = [name for name in dict.fromkeys(content.defect_types) if name == GOOD]
    order += [name for name in dict.fromkeys(content.defect_types) if name != GOOD]
    strip = plots.strip_chart(scores, list(content.defect_types), order, labels.tolist(), threshold,
                              threshold_name)
    return (_figure("Score distribution", histogram, "Good and defective images on shared bins.")
            + _figure("Scores per defect type", strip, "One dot per image, jittered vertically."))


def _gallery(key: str, title: str, lead: str, examples: list[Example], total: int | None,
             scale: ColourScale) -> str:
    shown = examples[:MAX_EXAMPLES]
    which = "" if key == "true_detections" else " worst"
    count = "" if total is None else f" {total} at this threshold; {len(shown)}{which} shown."
    if total == 0:
        count = " None at this threshold."
    if not shown:
        body = "" if total == 0 else '<p class="skip">No examples were collected.</p>'
    else:
        head = "".join(f"<div>{escape(label)}</div>" for label in TILE_LABELS)
        body = (f'<div class="gallery-head"><div>file</div>{head}</div>'
                + "".join(_example_html(index, example, scale) for index, example in enumerate(shown, 1)))
    return (f'<section id="{key.replace("_", "-")}"><h2>{escape(title)}</h2>'
            f'<p class="lead">{escape(lead)}{escape(count)}</p>{body}</section>')


def render_report(content: ReportContent) -> str:
    """The complete HTML page for the content, as a string."""
    scores = np.asarray(content.image_scores, dtype=np.float64)
    labels = np.asarray(content.labels).astype(bool)
    overall = content.metrics.get("overall", {})
    threshold, threshold_name = _image_threshold(content)
    totals: dict[str, int | None] = dict.fromkeys(name for name, _, _ in GALLERIES)
    if threshold is not None:
        point = plots.operating_point(scores, labels, threshold)
        totals = {"false_positives": point["fp"], "false_negatives": point["fn"],
                  "true_detections": point["tp"]}
    meta = " · ".join(escape(f"{name}: {content.metrics[key]}") for key, name in
                      (("category", "category"), ("data", "test data"), ("run", "model"),
                       ("precision", "precision"), ("backend", "backend")) if content.metrics.get(key))
    meta += f"{' · ' if meta else ''}{labels.size} test images ({int(labels.sum())} defective)"
    links = [("summary", "Summary"), ("metrics", "Metrics"), ("curves", "Curves"), ("scores", "Scores"),
             *((key.replace("_", "-"), title) for key, title, _ in GALLERIES)]
    nav = "".join(f'<a href="#{anchor}">{escape(name)}</a>' for anchor, name in links)
    scale = ColourScale.of(content.thresholds)
    galleries = "".join(_gallery(key, title, lead, getattr(content, key), totals[key], scale)
                        for key, title, lead in GALLERIES)
    pixel_threshold = content.thresholds.get("pixel")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(content.title)}</title><style>{STYLE}</style></head><body>"
        f'<header class="top"><div class="inner"><h1>{escape(content.title)}</h1>'
        f'<div class="meta">{meta}</div><nav>{nav}</nav></div></header><main>'
        f'<section id="summary"><h2>Summary</h2><p class="lead">Overall scores on the test set '
        f"(1.000 is perfect).</p>{_note(content.note)}{_cards(overall)}"
        f"{_decision(content, threshold, threshold_name)}</section>"
        f'<section id="metrics"><h2>Metrics per defect type</h2>{_metrics_table(content.metrics)}</section>'
        f'<section id="curves"><h2>Curves</h2><p class="lead">Image level: is the image defective? '
        "Pixel level: where is the defect?</p>"
        f'<div class="charts">{_image_curves(scores, labels, threshold, threshold_name)}'
        f"{_pixel_curves(content.pixel_curve, overall, pixel_threshold)}</div></section>"
        f'<section id="scores"><h2>Image scores</h2><p class="lead">How well the scores separate good from '
        f'defective images, and where the threshold cuts.</p>'
        f'<div class="charts">{_score_plots(content, threshold, threshold_name)}</div></section>'
        f"{galleries}<footer>Generated by draem test. This page is self-contained and works offline.</footer>"
        f"</main><script>{IMAGE_CHECK}</script></body></html>\n")


def write_report(path: Path, content: ReportContent) -> Path:
    """Atomically write the report page to path and return the path."""
    path = Path(path)
    write_text(path, render_report(content))
    return path
