"""The DAGM 2007 layout: ClassN/{Train,Test}, each with Label/Labels.txt and NNNN_label.PNG."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from draem.data.layout import GOOD, LabelledSample, check_test_set, require_dir
from draem.errors import DraemError

DEFECT = "defect"
TRAIN, TEST = "Train", "Test"


@dataclass(frozen=True)
class LabelRow:
    """One row of Labels.txt: an image, whether it is defective, and its defect mask."""

    image: Path
    defective: bool
    mask: Path | None


def read_labels(split: Path) -> list[LabelRow]:
    """Rows of `split/Label/Labels.txt`: a header line, then `index flag image 0 label` rows."""
    labels = split / "Label" / "Labels.txt"
    if not labels.is_file():
        raise DraemError(f"{labels}: DAGM label file not found")
    lines = labels.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    rows: list[LabelRow] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or (number == 1 and len(fields) < 3):
            continue
        if len(fields) < 3 or fields[1] not in ("0", "1"):
            raise DraemError(f"{labels}:{number}: expected 'index flag image 0 label', "
                             f"got {line.strip()!r}")
        image = split / fields[2]
        if not image.is_file():
            raise DraemError(f"{image}: listed in {labels}:{number} but not found")
        defective = fields[1] == "1"
        mask = None
        if defective:
            named = len(fields) >= 5 and fields[4] != "0"
            mask = split / "Label" / (fields[4] if named else f"{image.stem}_label.PNG")
            if not mask.is_file():
                raise DraemError(f"{mask}: defect mask of {image.name} "
                                 f"({labels}:{number}) not found")
        rows.append(LabelRow(image, defective, mask))
    if not rows:
        raise DraemError(f"{labels}: no image rows")
    return rows


@dataclass(frozen=True)
class DagmClass:
    """One DAGM class folder: `Train/` and `Test/`, both labelled by `Label/Labels.txt`."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    def train_images(self) -> list[Path]:
        split = require_dir(self.root / TRAIN, "DAGM training folder Train")
        paths = sorted(row.image for row in read_labels(split) if not row.defective)
        if not paths:
            raise DraemError(f"{split / 'Label' / 'Labels.txt'}: no defect-free images (flag 0)")
        return paths

    def test_samples(self) -> list[LabelledSample]:
        split = require_dir(self.root / TEST, "DAGM test folder Test")
        samples = [LabelledSample(row.image, DEFECT if row.defective else GOOD, row.mask)
                   for row in read_labels(split)]
        return check_test_set(sorted(samples, key=lambda s: s.path), split)


def _subfolders(path: Path) -> set[str]:
    """Exact names of the folders in `path` (case-sensitive even on case-insensitive disks)."""
    return {p.name for p in path.iterdir() if p.is_dir()} if path.is_dir() else set()


def dagm_class_folder(path: Path) -> Path | None:
    """The class folder holding Train/ and Test/: `path`, or `path/<its own name>` when nested."""
    for candidate in (path, path / path.name):
        if {TRAIN, TEST} <= _subfolders(candidate):
            return candidate
    return None


def _class_order(path: Path) -> tuple[int, str]:
    """Class2 before Class10."""
    match = re.search(r"(\d+)$", path.name)
    return (int(match.group(1)) if match else -1, path.name)


def dagm_classes(root: Path) -> list[DagmClass]:
    """The class folders under a DAGM root, or the root itself when it is one class."""
    own = dagm_class_folder(root)
    if own is not None:
        return [DagmClass(own)]
    found = [(p, dagm_class_folder(p)) for p in sorted(root.iterdir(), key=_class_order)
             if p.is_dir()]
    classes = [DagmClass(folder) for _, folder in found if folder is not None]
    if not classes:
        raise DraemError(f"{root}: no DAGM class folder with Train/ and Test/")
    return classes


def is_dagm(root: Path) -> bool:
    """True for a DAGM class folder or a folder holding some."""
    return dagm_class_folder(root) is not None or any(
        dagm_class_folder(p) is not None for p in root.iterdir() if p.is_dir())
