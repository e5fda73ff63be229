"""Weights on disk, below the engine and the methods: the model-file format, reading torch files, and checking
a state dict against a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from draem.errors import DraemError

MODEL_FORMAT = "draem-model/2"
FIRST_MODEL_FORMAT = "draem-model/1"


def check_state_dict(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path,
                     what: str) -> None:
    """Raise a one-line DraemError when `state` does not have exactly the expected keys and shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        first = missing[0] if missing else unexpected[0]
        kind = "missing" if missing else "unexpected"
        raise DraemError(f"{path}: not a checkpoint of {what} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected keys; {kind}: {first})")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise DraemError(f"{path}: weight {key} has shape {tuple(state[key].shape)}, "
                             f"expected {tuple(value.shape)} for {what}")


def read_torch_file(path: Path) -> Any:
    """torch.load with a one-line error for missing, truncated or foreign files."""
    if not path.is_file():
        raise DraemError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().split("\n")[0].split(". ")[0].rstrip(".") or type(exc).__name__
        raise DraemError(f"{path}: cannot read checkpoint, the file is damaged or not a PyTorch file "
                         f"({reason})") from exc
