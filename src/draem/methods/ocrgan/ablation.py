"""The rows of OCR-GAN's frequency ablation (the paper's Table VI, MVTec AD 'all') and its forged-sample setting.

Table VI trains without forged samples (its OCR-GAN column is Table I's 96.9); Table I's 98.3 adds them.
The paper reports image AUROC only.
"""

from __future__ import annotations

from typing import Any

from draem.methods.base import AblationRow


def ocrgan_row(name: str, label: str, columns: str, image_auroc: float, note: str = "", **options: Any) -> AblationRow:
    """A row trained by `ocrgan` with `options`, without anomaly sources; the paper gives image AUROC only."""
    return AblationRow(name, label, "ocrgan", options, "none", columns, image_auroc, None, None, note)


ABLATION_ROWS = (
    ocrgan_row("high", "high frequency", "high-frequency branch", 82.6,
               bands="high", channel_selection=False, forged_samples=False),
    ocrgan_row("low", "low frequency", "low-frequency branch", 73.3,
               bands="low", channel_selection=False, forged_samples=False),
    ocrgan_row("two-branches", "two branches", "both branches", 74.8,
               bands="both", channel_selection=False, forged_samples=False),
    ocrgan_row("ocrgan", "OCR-GAN", "both branches, channel selection", 96.9,
               bands="both", channel_selection=True, forged_samples=False),
    ocrgan_row("ocrgan-forged", "OCR-GAN with forged samples", "both branches, channel selection, forged samples",
               98.3, "Table I's 'Ours‡', not a row of Table VI", bands="both", channel_selection=True,
               forged_samples=True),
)
