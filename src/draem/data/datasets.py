"""Torch datasets that decode and fit images for training and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from draem.data.images import binary_mask, fit_to_square, read_image, read_mask, valid_region
from draem.data.layout import GOOD, LabelledSample
from draem.errors import DraemError
from draem.synthesis.sources import load_texture


class TrainImages(Dataset):
    """Index pairs (image, texture) -> fitted image and, when textures are given, a texture."""

    def __init__(self, paths: Sequence[Path], size: int, fit: str, textures: Sequence[Path] = (),
                 resize: str = "antialias") -> None:
        self.paths, self.size, self.fit, self.textures = list(paths), size, fit, list(textures)
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: tuple[int, int]) -> dict[str, torch.Tensor]:
        image_index, texture_index = index
        item = {"image": fit_to_square(read_image(self.paths[image_index]), self.size, self.fit,
                                        self.resize)[0]}
        if self.textures:
            item["source"] = load_texture(self.textures[texture_index], self.size)
        return item


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
