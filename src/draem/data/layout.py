"""What every dataset layout provides: defect-free training images and labelled test images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from draem.errors import DraemError

GOOD = "good"


@dataclass(frozen=True)
class LabelledSample:
    """One test image: its defect type ('good' for defect-free) and its mask file, if it has one."""

    path: Path
    defect_type: str
    mask_path: Path | None


class ImageDataset(Protocol):
    """One category of one dataset, in whatever layout it is stored."""

    name: str
    root: Path

    def train_images(self) -> list[Path]:
        """Defect-free training images (a clear DraemError when there are none)."""
        ...

    def test_samples(self) -> list[LabelledSample]:
        """Labelled test images (a clear DraemError when the layout is broken)."""
        ...


def require_dir(path: Path, what: str) -> Path:
    """The path, or a DraemError saying the folder is missing or not a folder."""
    if not path.exists():
        raise DraemError(f"{path}: {what} not found")
    if not path.is_dir():
        raise DraemError(f"{path}: {what} is not a folder")
    return path


def check_test_set(samples: list[LabelledSample], where: Path) -> list[LabelledSample]:
    """A test set needs good and defective images."""
    if not samples:
        raise DraemError(f"{where}: no test images")
    if not any(s.defect_type == GOOD for s in samples):
        raise DraemError(f"{where}: no defect-free test images")
    if all(s.defect_type == GOOD for s in samples):
        raise DraemError(f"{where}: no defective test images")
    return samples
