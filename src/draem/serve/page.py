"""The review page: server-side HTML around a small plain-JavaScript client (static/page.js), no build step."""

from __future__ import annotations

from html import escape
from typing import Any

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>draem inspection · {method}</title>
<link rel="stylesheet" href="/static/page.css">
</head>
<body data-token-required="{token_required}">
<header>
  <h1>draem inspection</h1>
  <p class="model">{method} · model <code>{version}</code> · <span title="{run}">{run_name}</span></p>
  <p class="counts" id="counts" data-testid="counts">…</p>
  <label class="operator">Operator <input type="text" id="operator" placeholder="your name (optional)"
    maxlength="200"></label>
</header>
<form id="token-form" hidden>
  <label>Access token <input type="password" id="token-input" autocomplete="off"></label>
  <button type="submit">Use</button>
</form>
<main>
  <section id="stream">
    <form id="upload-form" data-testid="upload-form">
      <input type="file" id="upload-files" name="images" accept="image/*" multiple required>
      <input type="text" id="upload-source" placeholder="source (optional)" maxlength="200">
      <button type="submit">Inspect</button>
      <p id="upload-status" role="status"></p>
    </form>
    <p class="filters">
      <label>Show <select id="filter">
        <option value="">all</option><option value="decision=defective">defective</option>
        <option value="review=unreviewed">not reviewed</option><option value="review=reviewed">reviewed</option>
      </select></label>
    </p>
    <ol id="list" data-testid="list"></ol>
  </section>
  <section id="detail" hidden data-testid="detail">
    <h2 id="detail-title"></h2>
    <div class="pictures">
      <figure><img id="detail-image" alt="image"><figcaption>image</figcaption></figure>
      <figure><img id="detail-overlay" alt="overlay" data-testid="detail-overlay">
        <figcaption>overlay (red outline: defect mask)</figcaption></figure>
      <figure><img id="detail-map" alt="anomaly map"><figcaption>anomaly map</figcaption></figure>
    </div>
    <p id="detail-score"></p>
    <div class="bar"><span id="score-bar"></span><span id="threshold-mark"></span></div>
    <p id="detail-meta"></p>
    <div class="review">
      <input type="text" id="review-note" placeholder="note (optional)" maxlength="2000">
      <button type="button" data-verdict="good">Good (false alarm)</button>
      <button type="button" data-verdict="defective">Defective</button>
      <button type="button" data-verdict="unsure">Unsure</button>
      <p id="review-status" data-testid="review-status"></p>
    </div>
  </section>
  <section id="threshold-panel">
    <h2>Threshold</h2>
    <p>In force: <b id="threshold-current">–</b> (run's calibrated: <span id="threshold-calibrated">–</span>)</p>
    <input type="range" id="threshold-slider" data-testid="threshold-slider" min="0" max="1" step="0.001">
    <p id="threshold-effect" data-testid="threshold-effect"></p>
    <button type="button" id="threshold-save">Save threshold</button>
    <p id="threshold-status" role="status"></p>
    <ol id="threshold-history"></ol>
  </section>
</main>
<script src="/static/page.js"></script>
</body>
</html>
"""


def render_page(model: dict[str, Any], token_required: bool) -> str:
    """The page's HTML, every server-side value escaped."""
    run = str(model["run"])
    return PAGE.format(method=escape(model["method"]), version=escape(model["version"]), run=escape(run),
                       run_name=escape(run.rstrip("/").rsplit("/", 1)[-1]),
                       token_required="true" if token_required else "false")
