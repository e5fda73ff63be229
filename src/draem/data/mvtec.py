"""The MVTec AD folder layout: categories, defect-free training images, labelled test images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from draem.data.images import IMAGE_EXTENSIONS, list_images
from draem.errors import DraemError

GOOD = "good"


@dataclass(frozen=True)
class LabelledSample:
    """One test image: its defect type ('good' for defect-free) and its mask file if defective."""

    path: Path
    defect_type: str
    mask_path: Path | None


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DraemError(f"{path}: {what} not found")
    if not path.is_dir():
        raise DraemError(f"{path}: {what} is not a folder")
    return path


def find_categories(root: str | Path) -> list[Path]:
    """Category folders under an MVTec-layout root, or [root] when it is itself a category."""
    root = _require_dir(Path(root), "dataset folder")
    if (root / "train").is_dir() or (root / "test").is_dir():
        return [root]
    categories = sorted(p for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())
    if not categories:
        raise DraemError(f"{root}: no category folder with a train/ subfolder (MVTec AD layout)")
    return categories


def category_dir(root: str | Path, category: str | None) -> Path:
    """The folder of one category: `root/category`, or root itself when it is a category folder."""
    root = Path(root)
    if category is None:
        categories = find_categories(root)
        if len(categories) > 1:
            names = ", ".join(p.name for p in categories)
            raise DraemError(f"{root}: holds several categories ({names}); choose one with --category")
        return categories[0]
    return _require_dir(root / category, f"category {category!r}")


def list_train_images(category: Path) -> list[Path]:
    """Defect-free training images of a category (train/good)."""
    folder = _require_dir(category / "train" / GOOD, "training folder train/good")
    paths = list_images(folder)
    if not paths:
        raise DraemError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def find_mask(category: Path, defect_type: str, image: Path) -> Path | None:
    """The ground-truth mask `<stem>_mask.<any ext>` of a defective test image, if present."""
    folder = category / "ground_truth" / defect_type
    for candidate in sorted(folder.glob(f"{image.stem}_mask.*")):
        if candidate.suffix.lower() in IMAGE_EXTENSIONS:
            return candidate
    return None


def list_test_samples(category: Path) -> list[LabelledSample]:
    """Every test image with its defect type and mask; a defective image without a mask is an error."""
    test_dir = _require_dir(category / "test", "test folder")
    samples: list[LabelledSample] = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for path in list_images(type_dir):
            mask = None if type_dir.name == GOOD else find_mask(category, type_dir.name, path)
            if type_dir.name != GOOD and mask is None:
                expected = category / "ground_truth" / type_dir.name / f"{path.stem}_mask.png"
                raise DraemError(f"{path}: defective test image has no mask (expected {expected})")
            samples.append(LabelledSample(path, type_dir.name, mask))
    if not samples:
        raise DraemError(f"{test_dir}: no test images")
    if not any(s.defect_type == GOOD for s in samples):
        raise DraemError(f"{test_dir / GOOD}: no defect-free test images")
    return samples
