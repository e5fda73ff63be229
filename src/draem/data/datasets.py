"""Torch datasets that decode and fit images for training and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from draem.data.images import binary_mask, fit_to_square, read_image, read_mask, valid_region
from draem.data.layout import GOOD, LabelledSample
from draem.errors import DraemError
from draem.synthesis.sources import load_texture


class TrainImages(Dataset):
    """Index pairs (image, texture) -> fitted image and, when textures are given, a texture.

    Fitted images and textures stay in memory up to `cache_bytes` in all, so that later epochs skip decoding
    and resizing (within one process: a loader worker's cache ends with its epoch).
    """

    def __init__(self, paths: Sequence[Path], size: int, fit: str, textures: Sequence[Path] = (),
                 resize: str = "antialias", cache_bytes: int = 0) -> None:
        self.paths, self.size, self.fit, self.textures = list(paths), size, fit, list(textures)
        self.resize, self.cache_bytes = resize, cache_bytes
        self._cache: dict[tuple[str, Path], torch.Tensor] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: tuple[int, int]) -> dict[str, torch.Tensor]:
        image_index, texture_index = index
        item = {"image": self._load("image", self.paths[image_index], self._fit)}
        if self.textures:
            item["source"] = self._load("source", self.textures[texture_index],
                                        lambda path: load_texture(path, self.size))
        return item

    def _fit(self, path: Path) -> torch.Tensor:
        return fit_to_square(read_image(path), self.size, self.fit, self.resize)[0]

    def _load(self, kind: str, path: Path, load: Callable[[Path], torch.Tensor]) -> torch.Tensor:
        """load(path), kept for the next call while the cache has room."""
        if (tensor := self._cache.get((kind, path))) is not None:
            return tensor
        tensor = load(path)
        size = tensor.numel() * tensor.element_size()
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[kind, path] = tensor
            self._cached_bytes += size
        return tensor


class LabelledImages(Dataset):
    """Test samples -> fitted image, binary mask at the evaluation size, valid region and label."""

    def __init__(self, samples: Sequence[LabelledSample], size: int, fit: str, resize: str = "antialias") -> None:
        self.samples, self.size, self.fit, self.resize = list(samples), size, fit, resize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        image = read_image(sample.path)
        fitted, where = fit_to_square(image, self.size, self.fit, self.resize)
        if sample.mask_path is None:
            mask = torch.zeros(1, self.size, self.size)
        else:
            raw = read_mask(sample.mask_path)
            if raw.shape[-2:] != image.shape[-2:]:
                raise DraemError(
                    f"{sample.mask_path}: mask is {raw.shape[-1]}x{raw.shape[-2]} but its image "
                    f"{sample.path.name} is {image.shape[-1]}x{image.shape[-2]}")
            mask = fit_to_square(raw, self.size, self.fit, self.resize)[0]
        return {"image": fitted, "mask": binary_mask(mask[0], self.resize), "valid": valid_region(where, self.size),
                "defective": sample.defect_type != GOOD, "index": index}
