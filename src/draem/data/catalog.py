"""Open a dataset folder in any supported layout and pick its categories."""

from __future__ import annotations

from pathlib import Path

from draem.data.layout import ImageDataset, require_dir
from draem.data.mvtec import mvtec_categories
from draem.errors import DraemError

ALL = "all"


def find_datasets(data: str | Path) -> list[ImageDataset]:
    """Every category found under `data` (a dataset root or one category folder)."""
    root = require_dir(Path(data), "dataset folder")
    return list(mvtec_categories(root))


def open_dataset(data: str | Path, category: str | None = None) -> ImageDataset:
    """One category: the only one under `data`, or the one named `category`."""
    found = find_datasets(data)
    if category is None:
        if len(found) > 1:
            names = ", ".join(d.name for d in found)
            raise DraemError(f"{data}: holds several categories ({names}); choose one with --category")
        return found[0]
    for dataset in found:
        if dataset.name == category:
            return dataset
    names = ", ".join(d.name for d in found)
    raise DraemError(f"{Path(data) / category}: category {category!r} not found (found: {names})")
