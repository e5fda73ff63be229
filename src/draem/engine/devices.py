"""Device choice and mixed-precision contexts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from draem.errors import DraemError

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else must be available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DraemError(f"--device {name}: not a device name ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DraemError(f"--device {name}: CUDA is not available on this machine")
    return device


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on the device for 'bf16'; plain fp32 otherwise."""
    if precision not in PRECISIONS:
        raise DraemError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
