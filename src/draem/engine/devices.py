"""Device choice, number formats and mixed-precision contexts."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from draem.errors import DraemError

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


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


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 where the hardware computes it natively, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise DraemError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on the device for 'bf16'; plain fp32 for 'fp32', with CUDA's TF32 shortcut turned off."""
    exact = device.type == "cuda" and precision == "fp32"
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if exact:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
