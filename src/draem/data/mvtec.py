"""The MVTec AD folder layout: categories, defect-free training images, labelled test images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from draem.data.images import IMAGE_EXTENSIONS, list_images
from draem.data.layout import GOOD, LabelledSample, check_test_set, require_dir
from draem.errors import DraemError


def is_mvtec_category(path: Path) -> bool:
    """True for a folder with train/ or test/ in it."""
    return (path / "train").is_dir() or (path / "test").is_dir()


def find_mask(category: Path, defect_type: str, image: Path) -> Path | None:
    """The ground-truth mask `<stem>_mask.<any ext>` of a defective test image, if present."""
    folder = category / "ground_truth" / defect_type
    for candidate in sorted(folder.glob(f"{image.stem}_mask.*")):
        if candidate.suffix.lower() in IMAGE_EXTENSIONS:
            return candidate
    return None


@dataclass(frozen=True)
class MVTecCategory:
    """`root/train/good`, `root/test/<type>`, `root/ground_truth/<type>/<stem>_mask.*`."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    def train_images(self) -> list[Path]:
        folder = require_dir(self.root / "train" / GOOD, "training folder train/good")
        paths = list_images(folder)
        if not paths:
            raise DraemError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        return paths

    def test_samples(self) -> list[LabelledSample]:
        test_dir = require_dir(self.root / "test", "test folder")
        samples: list[LabelledSample] = []
        for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            for path in list_images(type_dir):
                mask = None if type_dir.name == GOOD else find_mask(self.root, type_dir.name, path)
                if type_dir.name != GOOD and mask is None:
                    expected = self.root / "ground_truth" / type_dir.name / f"{path.stem}_mask.png"
                    raise DraemError(f"{path}: defective test image has no mask (expected {expected})")
                samples.append(LabelledSample(path, type_dir.name, mask))
        return check_test_set(samples, test_dir)


def mvtec_categories(root: Path) -> list[MVTecCategory]:
    """Category folders under an MVTec-layout root, or the root itself when it is a category."""
    if is_mvtec_category(root):
        return [MVTecCategory(root)]
    categories = sorted(p for p in root.iterdir() if p.is_dir() and is_mvtec_category(p))
    if not categories:
        raise DraemError(f"{root}: no category folder with a train/ subfolder (MVTec AD layout)")
    return [MVTecCategory(p) for p in categories]
