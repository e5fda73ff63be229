"""Open a dataset folder in any supported layout and pick its categories."""

from __future__ import annotations

from pathlib import Path

from draem.data.dagm import dagm_classes, is_dagm
from draem.data.folders import FolderDataset
from draem.data.kolektor import KolektorSDD2, is_kolektor
from draem.data.layout import ImageDataset, require_dir
from draem.data.mvtec import is_mvtec_category, mvtec_categories
from draem.errors import DraemError

ALL = "all"
LAYOUTS = ("MVTec AD (<category>/train/good, <category>/test/<type>), "
           "DAGM 2007 (ClassN/Train and ClassN/Test, each with Label/Labels.txt), "
           "KolektorSDD2 (train/ and test/ holding NNNNN.png with NNNNN_GT.png)")


def find_datasets(data: str | Path) -> list[ImageDataset]:
    """Every category found under `data` (a dataset root or one category folder), in any layout."""
    root = require_dir(Path(data), "dataset folder")
    if is_dagm(root):
        return list(dagm_classes(root))
    if is_kolektor(root):
        return [KolektorSDD2(root)]
    if is_mvtec_category(root) or any(p.is_dir() and is_mvtec_category(p) for p in root.iterdir()):
        return list(mvtec_categories(root))
    raise DraemError(f"{root}: no category folder in any supported layout; expected {LAYOUTS}")


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


def select_dataset(data: str | Path | None, category: str | None = None, normal: str | Path | None = None,
                   abnormal: str | Path | None = None, masks: str | Path | None = None,
                   trained_on: str | Path | None = None, testing: bool = False) -> ImageDataset:
    """A dataset root (`--data`, any layout) or plain folders (`--normal`, `--abnormal`, `--masks`).

    For testing, `normal` holds the defect-free test images and `trained_on` the training folder.
    """
    if normal is None:
        if data is None:
            raise DraemError("give --data (a dataset folder) or --normal (a folder of good images)")
        return open_dataset(data, category)
    if data is not None:
        raise DraemError("give either --data or --normal/--abnormal/--masks, not both")
    if abnormal is None:
        if testing:
            raise DraemError(f"{normal}: --normal is given without --abnormal; testing needs a folder of "
                             "defective images too (--abnormal, and --masks for pixel metrics)")
        return FolderDataset(train_normal=Path(normal))
    return FolderDataset(train_normal=None if trained_on is None else Path(trained_on),
                         test_normal=Path(normal), abnormal=Path(abnormal),
                         masks=None if masks is None else Path(masks))
