"""`draem reviews export`: the reviewed images as good/ and defective/ folders plus a manifest, to close the loop."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from draem.errors import DraemError
from draem.files import output_folder, write_bytes, write_text
from draem.serve.store import Store

MANIFEST_COLUMNS = ("id", "source", "score", "verdict", "note", "model_version")


@dataclass
class ExportCounts:
    """What an export wrote and left out."""

    good: int = 0
    defective: int = 0
    unsure: int = 0
    pruned: int = 0


def export_reviews(store_dir: str | Path, out: str | Path) -> ExportCounts:
    """Write each reviewed inspection's image under out/<verdict>/ (latest review; unsure left out) and
    out/manifest.csv."""
    store_dir = Path(store_dir)
    if not (store_dir / "history.db").exists():
        raise DraemError(f"{store_dir}: not a draem serve store (no history.db)")
    out = output_folder(out)
    store = Store(store_dir)
    counts = ExportCounts()
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    try:
        for row in store.latest_reviews():
            verdict = row["verdict"]
            if verdict == "unsure":
                counts.unsure += 1
                continue
            source = store.file_path(row["id"], "image", row["image_ext"])
            if row["files_pruned"] or not source.exists():
                counts.pruned += 1
                continue
            write_bytes(out / verdict / source.name, source.read_bytes())
            setattr(counts, verdict, getattr(counts, verdict) + 1)
            writer.writerow({"id": row["id"], "source": row["source"] or "", "score": row["score"],
                             "verdict": verdict, "note": row["note"], "model_version": row["model_version"]})
    finally:
        store.close()
    write_text(out / "manifest.csv", table.getvalue())
    return counts
