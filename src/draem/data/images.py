"""Decode any common image file into a float RGB tensor in [0, 1], and fit it to a square."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from draem.errors import DraemError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def is_image_file(path: Path) -> bool:
    """True when the file name has an image extension we decode."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in a folder, sorted by path."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and is_image_file(p))


def _decode(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except FileNotFoundError as exc:
        raise DraemError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Warning) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise DraemError(f"{path}: unreadable image ({reason})") from exc
    return image


def unit_array(image: Image.Image) -> np.ndarray:
    """Pixel values of a decoded image as float32 in [0, 1], shape (H, W) or (H, W, C): 16-bit, float, grey, RGB;
    other modes (RGBA, palette) as RGB."""
    if image.mode in _FULL_SCALE:
        return np.clip(np.asarray(image, dtype=np.float32) / _FULL_SCALE[image.mode], 0.0, 1.0)
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255.0


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file (any mode, 8 or 16 bit) to a float32 RGB tensor (3, H, W) in [0, 1]."""
    return rgb_tensor(unit_array(_decode(Path(path))))


def rgb_tensor(array: np.ndarray) -> torch.Tensor:
    """A unit array (H, W) or (H, W, 3) as an RGB tensor (3, H, W), grey repeated over the channels."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def unreadable_images(paths: list[Path]) -> list[str]:
    """'file: reason' for every file among `paths` that does not decode completely."""
    problems = []
    for path in paths:
        try:
            _decode(path)
        except DraemError as exc:
            problems.append(str(exc))
    return problems


def read_mask(path: str | Path) -> torch.Tensor:
    """Decode a mask file to a float32 tensor (1, H, W) in [0, 1] (any non-grey mode is averaged)."""
    path = Path(path)
    array = unit_array(_decode(path))
    if array.ndim == 3:
        array = array.mean(axis=2)
    return torch.from_numpy(np.ascontiguousarray(array))[None]


@dataclass(frozen=True)
class Placement:
    """Where an image of size (height, width) sits inside the square it was fitted into."""

    height: int
    width: int
    top: int
    left: int
    inner_height: int
    inner_width: int


FIT_MODES = ("resize", "pad")
RESIZE_MODES = ("antialias", "authors")
"""antialias: bilinear with antialiasing when shrinking; authors: bilinear without it, as OpenCV's
INTER_LINEAR in the authors' code, and a mask pixel counts as defective only where it stays 255."""


def placement(height: int, width: int, size: int, fit: str) -> Placement:
    """How `fit` maps an image of this size into a size x size square."""
    if fit == "resize":
        return Placement(height, width, 0, 0, size, size)
    if fit == "pad":
        scale = size / max(height, width)
        inner_h = max(1, min(size, round(height * scale)))
        inner_w = max(1, min(size, round(width * scale)))
        return Placement(height, width, (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w)
    raise ValueError(f"unknown fit mode {fit!r}; expected one of {FIT_MODES}")


def resize(tensor: torch.Tensor, height: int, width: int, mode: str = "antialias") -> torch.Tensor:
    """Bilinear resize of a (C, H, W) or (B, C, H, W) float tensor, antialiased when shrinking unless
    `mode` is 'authors'."""
    if tuple(tensor.shape[-2:]) == (height, width):
        return tensor
    batched = tensor if tensor.dim() == 4 else tensor[None]
    antialias = mode == "antialias" and (height < batched.shape[-2] or width < batched.shape[-1])
    out = F.interpolate(batched, size=(height, width), mode="bilinear", align_corners=False,
                        antialias=antialias)
    return out if tensor.dim() == 4 else out[0]


def fit_to_square(tensor: torch.Tensor, size: int, fit: str, mode: str = "antialias"
                  ) -> tuple[torch.Tensor, Placement]:
    """Resize a (C, H, W) tensor into a size x size square; `pad` keeps the aspect ratio."""
    where = placement(tensor.shape[-2], tensor.shape[-1], size, fit)
    inner = resize(tensor, where.inner_height, where.inner_width, mode)
    if fit == "resize":
        return inner, where
    pad = (where.left, size - where.left - where.inner_width, where.top,
           size - where.top - where.inner_height)
    return F.pad(inner[None], pad, mode="replicate")[0], where


def binary_mask(mask: torch.Tensor, mode: str = "antialias") -> torch.Tensor:
    """Defective pixels of a resized mask in [0, 1]: at least half (ours) or still 255 (the authors')."""
    return mask >= (254.5 / 255 if mode == "authors" else 0.5)


def valid_region(where: Placement, size: int) -> torch.Tensor:
    """Boolean (size, size) map of the pixels that come from the image rather than padding."""
    region = torch.zeros(size, size, dtype=torch.bool)
    region[where.top:where.top + where.inner_height, where.left:where.left + where.inner_width] = True
    return region


def map_to_original(anomaly_map: torch.Tensor, where: Placement) -> torch.Tensor:
    """Crop the padding from a (..., S, S) map and resize it back to the image's own size."""
    inner = anomaly_map[..., where.top:where.top + where.inner_height,
                        where.left:where.left + where.inner_width]
    lead = inner.shape[:-2]
    flat = inner.reshape(-1, 1, *inner.shape[-2:])
    out = F.interpolate(flat, size=(where.height, where.width), mode="bilinear", align_corners=False)
    return out.reshape(*lead, where.height, where.width)
