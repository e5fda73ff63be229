"""Plain folders of images: defect-free training images, and labelled test images with masks."""

from __future__ import annotations

from pathlib import Path

from draem.data.images import list_images
from draem.data.layout import GOOD, LabelledSample, check_test_set, require_dir
from draem.errors import DraemError

DEFECT = "defect"
MASK_SUFFIXES = ("", "_mask", "_GT")


def _images(folder: Path, what: str, recursive: bool = False) -> list[Path]:
    """Images in a folder (and its subfolders if `recursive`) that must exist and hold some."""
    paths = list_images(require_dir(folder, what), recursive)
    if not paths:
        raise DraemError(f"{folder}: no images in the {what}")
    return paths


def _is_mask_of_neighbour(path: Path, stems: set[str]) -> bool:
    """True for `<stem>_mask.*` or `<stem>_GT.*` when `<stem>.*` is in the same folder."""
    return any(path.stem.endswith(suffix) and path.stem.removesuffix(suffix) in stems
               for suffix in MASK_SUFFIXES[1:])


def _defective_images(abnormal: Path, masks: Path | None) -> list[Path]:
    """Images in `abnormal`, leaving out the masks when they share the folder."""
    paths = _images(abnormal, "folder of defective test images")
    if masks is None or masks.resolve() != abnormal.resolve():
        return paths
    stems = {p.stem for p in paths}
    return [p for p in paths if not _is_mask_of_neighbour(p, stems)]


class FolderDataset:
    """Training images from `train_normal`; test images from `test_normal` (good) and `abnormal`.

    Masks of defective images are matched by stem in `masks` (`<stem>.*`, `<stem>_mask.*` or
    `<stem>_GT.*`); without `masks`, defective samples have no mask (image metrics only).
    """

    def __init__(self, train_normal: Path | None, test_normal: Path | None = None,
                 abnormal: Path | None = None, masks: Path | None = None,
                 name: str | None = None) -> None:
        self.train_normal = None if train_normal is None else Path(train_normal)
        self.test_normal = None if test_normal is None else Path(test_normal)
        self.abnormal = None if abnormal is None else Path(abnormal)
        self.masks = None if masks is None else Path(masks)
        root = self.train_normal or self.test_normal
        if root is None:
            raise DraemError("--normal: a folder of defect-free images is required")
        self.root = root
        self.name = name or root.name

    def train_images(self) -> list[Path]:
        if self.train_normal is None:
            raise DraemError("--normal: no folder of defect-free training images given")
        return _images(self.train_normal, "folder of defect-free training images", recursive=True)

    def _mask_of(self, image: Path, index: dict[str, Path]) -> Path:
        """The mask matched to a defective image by stem, or a DraemError naming the image."""
        for suffix in MASK_SUFFIXES:
            mask = index.get(image.stem + suffix)
            if mask is not None and mask != image:
                return mask
        stem = image.stem
        raise DraemError(f"{image}: defective test image has no mask in {self.masks} "
                         f"(expected {stem}.png, {stem}_mask.png or {stem}_GT.png)")

    def test_samples(self) -> list[LabelledSample]:
        if self.test_normal is None:
            raise DraemError(f"{self.root}: no folder of defect-free test images given; "
                             "evaluation needs good images that training did not see")
        if self.abnormal is None:
            raise DraemError(f"{self.root}: no folder of defective test images given")
        if self.train_normal is not None and self.test_normal.resolve() == self.train_normal.resolve():
            raise DraemError(f"{self.test_normal}: the defect-free test folder is the training "
                             "folder; evaluation needs good images that training did not see")
        good = [LabelledSample(p, GOOD, None)
                for p in _images(self.test_normal, "folder of defect-free test images")]
        defective = _defective_images(self.abnormal, self.masks)
        if self.masks is None:
            return check_test_set(good + [LabelledSample(p, DEFECT, None) for p in defective],
                                  self.abnormal)
        index: dict[str, Path] = {}
        for path in list_images(require_dir(self.masks, "mask folder")):
            index.setdefault(path.stem, path)
        samples = [LabelledSample(p, DEFECT, self._mask_of(p, index)) for p in defective]
        return check_test_set(good + samples, self.abnormal)
