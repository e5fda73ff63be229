"""The rows of DRAEM's ablation study (the paper's Table 3), read literally from its checkmarks.

Each row's checkmarks are a string over COLUMNS ('✓' checked, '-' not), as counted from the tab-separated
table in the paper review; options follow from them. Rows whose reading is doubtful say so in a comment
and in their `note`.
"""

from __future__ import annotations

from typing import Any

from draem.methods.base import AblationRow

COLUMNS = ("Recon. Net", "Discr. Net", "source augmentation", "image rotation", "β", "ImageNet", "DTD", "Perlin",
           "Rectangle")
"""Table 3's checkmark columns in order; the two 'Augmentation' columns are the source's and the image's."""

ROTATION_PROB = 0.3
"""The paper's probability of rotating a training image."""


def checked(marks: str) -> dict[str, bool]:
    """Each of COLUMNS with whether `marks` (one '✓' or '-' per column) checks it."""
    return dict(zip(COLUMNS, (mark == "✓" for mark in marks), strict=True))


def columns_text(marks: str) -> str:
    """The checked columns as the table's short description."""
    return ", ".join(name for name, on in checked(marks).items() if on)


def draem_row(name: str, label: str, marks: str, figures: tuple[float, float, float], note: str = "",
              **assumed: Any) -> AblationRow:
    """A DRAEM row whose options follow its checkmarks; `assumed` sets what the checkmarks leave open."""
    on = checked(marks)
    shape = "perlin" if on["Perlin"] else "rect" if on["Rectangle"] else None
    options = {"reconstruction": on["Recon. Net"], "discrimination": on["Discr. Net"], "recon_loss": "l2+ssim",
               "source": "images" if on["ImageNet"] or on["DTD"] else "colour", "mask_shape": shape,
               "source_augmentation": on["source augmentation"],
               "rotation_prob": ROTATION_PROB if on["image rotation"] else 0.0,
               "beta": "random" if on["β"] else "fixed", **assumed}
    source = "natural" if on["ImageNet"] else "textures" if on["DTD"] else "none"
    return AblationRow(name, label, "draem", options, source, columns_text(marks), *figures, note)


ABLATION_ROWS = (
    # (i) method architecture
    draem_row("disc", "Disc.", "-✓✓✓✓-✓✓-", (93.9, 92.7, 62.5)),
    draem_row("recon-ae", "Recon.-AE", "✓-✓✓✓-✓✓-", (83.9, 89.7, 47.5)),
    draem_row("recon-ae-msgms", "Recon.-AE_MSGMS", "✓-✓✓✓-✓✓-", (90.7, 93.4, 50.9), recon_loss="msgms"),
    AblationRow("riad", "RIAD", "riad", {}, "none", columns_text("✓-------✓"), 91.7, 94.2, None,
                "the RIAD method with its own defaults; the paper gives no pixel AP"),
    # Supervised: trained on real defects with their masks, which the unsupervised protocol does not have.
    AblationRow("bozic", "Božič et al.", None, {}, "none", columns_text("--✓✓--✓✓-"), 92.8, 93.9, 60.7,
                "supervised (trains on real defects and their masks): not reproducible here"),
    # (ii) anomaly source. ImageNet: no shape column is checked (6 marks where DRAEM has 7, a mark lost in the
    # text); as the group varies only the source, the shape is taken to be DRAEM's Perlin.
    draem_row("draem-imagenet", "DRÆM_ImageNet", "✓✓✓✓✓✓---", (97.9, 97.0, 67.9),
              "no shape checked in the table: Perlin assumed", mask_shape="perlin"),
    # color: read literally the row also drops both augmentations and uses rectangles, although its group
    # varies only the source; doubtful, kept as written.
    draem_row("draem-color", "DRÆM_color", "✓✓--✓---✓", (96.2, 92.6, 56.5),
              "read literally: no augmentation, rectangles (the group varies only the source)"),
    # (iv) shape. rect: β is unchecked, although the group varies only the shape (6 marks where DRAEM has 7);
    # doubtful, kept as written (fixed opacity).
    draem_row("draem-rect", "DRÆM_rect", "✓✓✓✓--✓-✓", (96.9, 96.8, 65.1),
              "read literally: β unchecked (fixed opacity), though the group varies only the shape"),
    # (iii) hard simulated anomalies: none, source augmentation, and β.
    draem_row("draem-no-aug", "DRÆM_no-aug", "✓✓----✓✓-", (97.4, 94.5, 64.3)),
    draem_row("draem-img-aug", "DRÆM_img-aug", "✓✓✓---✓✓-", (97.4, 95.0, 64.5)),
    # β: read literally image rotation and β without source augmentation; a mark shifted one column would make it
    # img-aug plus β, the step between img-aug and DRAEM. Doubtful, kept as written.
    draem_row("draem-beta", "DRÆM_β", "✓✓-✓✓-✓✓-", (97.9, 97.1, 68.4),
              "read literally: image rotation and β, no source augmentation"),
    # (v) the reference
    draem_row("draem", "DRÆM", "✓✓✓✓✓-✓✓-", (98.0, 97.3, 68.4)),
)
