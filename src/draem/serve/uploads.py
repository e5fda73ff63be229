"""Uploaded image bytes -> a float RGB tensor, refusing what is too big, not an image or damaged."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from draem.data.images import rgb_tensor, unit_array

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif", "BMP": "bmp", "WEBP": "webp", "GIF": "gif", "PPM": "ppm"}


class UploadError(Exception):
    """An upload the service refuses: an HTTP status and a message naming the part."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class DecodedImage:
    """An accepted upload: its bytes as sent, their file extension and the decoded RGB image (3, H, W)."""

    data: bytes
    ext: str
    image: torch.Tensor
    file_name: str | None


def display_png(data: bytes) -> bytes:
    """A stored image that browsers do not show (TIFF, PPM) as an 8-bit PNG, without tensor operations."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        array = unit_array(Image.open(io.BytesIO(data)))
    stream = io.BytesIO()
    Image.fromarray((array * 255).round().astype(np.uint8)).save(stream, format="PNG")
    return stream.getvalue()


def decode_upload(part: str, data: bytes, file_name: str | None, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Decode one uploaded image; UploadError (4xx) for empty, oversized, non-image, too large or damaged files."""
    if not data:
        raise UploadError(400, f"{part}: empty file")
    if len(data) > max_bytes:
        raise UploadError(413, f"{part}: larger than the upload limit of {max_bytes / 2**20:g} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise UploadError(413, f"{part}: over the limit of {max_pixels} pixels (a decompression bomb?)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UploadError(415, f"{part}: not an image file this service decodes") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(413, f"{part}: {width}x{height} pixels, over the limit of {max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            array = unit_array(image)
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise UploadError(400, f"{part}: truncated or damaged image ({reason})") from exc
    return DecodedImage(data, EXTENSIONS.get(image.format or "", "img"), rgb_tensor(array), file_name)
