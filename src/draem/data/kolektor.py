"""The KolektorSDD2 layout: train/ and test/ with NNNNN.png images and NNNNN_GT.png masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from draem.data.images import list_images, read_mask
from draem.data.layout import GOOD, LabelledSample, check_test_set, require_dir
from draem.errors import DraemError

NAME = "kolektorsdd2"
DEFECT = "defect"
MASK_SUFFIX = "_GT"


def is_kolektor(root: Path) -> bool:
    """True for a folder with train/ and test/ where *_GT.png masks sit beside the images."""
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    return {"train", "test"} <= folders and any(
        next((root / split).glob(f"*{MASK_SUFFIX}.png"), None) is not None
        for split in ("train", "test"))


def has_defect(mask: Path) -> bool:
    """True when a ground-truth mask has any non-zero pixel."""
    return bool(read_mask(mask).amax() > 0)


@dataclass(frozen=True)
class KolektorSDD2:
    """`root/{train,test}/NNNNN.png` with `NNNNN_GT.png`; an empty mask marks a good image."""

    root: Path

    @property
    def name(self) -> str:
        return NAME

    def _labelled(self, split: str) -> list[tuple[Path, Path, bool]]:
        """(image, mask, defective) for every image of a split."""
        folder = require_dir(self.root / split, f"KolektorSDD2 {split} folder")
        images = [p for p in list_images(folder) if not p.stem.endswith(MASK_SUFFIX)]
        if not images:
            raise DraemError(f"{folder}: no images")
        labelled = []
        for image in images:
            mask = image.with_name(f"{image.stem}{MASK_SUFFIX}.png")
            if not mask.is_file():
                raise DraemError(f"{image}: ground-truth mask {mask.name} not found beside it")
            labelled.append((image, mask, has_defect(mask)))
        return labelled

    def train_images(self) -> list[Path]:
        paths = [image for image, _, defective in self._labelled("train") if not defective]
        if not paths:
            raise DraemError(f"{self.root / 'train'}: no defect-free images (all masks non-empty)")
        return paths

    def test_samples(self) -> list[LabelledSample]:
        samples = [LabelledSample(image, DEFECT, mask) if defective
                   else LabelledSample(image, GOOD, None)
                   for image, mask, defective in self._labelled("test")]
        return check_test_set(samples, self.root / "test")
