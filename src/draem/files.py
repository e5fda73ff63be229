"""Atomic file writes: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from draem.errors import DraemError

FILE_MODE = 0o644


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary file for binary writing that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(handle, FILE_MODE)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write bytes."""
    with atomic_open(path) as stream:
        stream.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write indented JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    """Atomically torch.save an object."""
    with atomic_open(path) as stream:
        torch.save(obj, stream)


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """A folder to write into: refused with one line when the path names an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DraemError(f"{path}: {flag} names a file; it must be a folder")
    return path


def write_with(path: str | Path, writer: Callable[[BinaryIO], None]) -> None:
    """Atomically write whatever `writer` puts into the stream (e.g. PIL's Image.save)."""
    with atomic_open(path) as stream:
        writer(stream)
