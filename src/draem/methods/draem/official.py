"""The authors' released DRAEM checkpoints: a reconstructive and a discriminative .pckl state dict."""

from __future__ import annotations

from pathlib import Path

import torch

from draem.errors import DraemError
from draem.methods.draem.model import DraemModel, DraemOptions
from draem.weights import check_state_dict, read_torch_file

RECON_FIRST = "encoder.block1.0.weight"
SEG_FIRST = "encoder_segment.block1.0.weight"


def _state_dict(path: Path, expected_first: str, flag: str, other_flag: str, other_first: str
                ) -> dict[str, torch.Tensor]:
    state = read_torch_file(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DraemError(f"{path}: not a PyTorch state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if expected_first not in state:
        if other_first in state:
            raise DraemError(f"{path}: holds the other sub-network's weights; did you swap "
                             f"{flag} and {other_flag}?")
        raise DraemError(f"{path}: not a DRAEM {flag[2:]} checkpoint (no {expected_first})")
    return state


def load_official(files: dict[str, Path]) -> DraemModel:
    """A DraemModel holding the authors' pair, its widths read from the weights."""
    recon, seg = files["recon"], files["seg"]
    recon_state = _state_dict(recon, RECON_FIRST, "--recon", "--seg", SEG_FIRST)
    seg_state = _state_dict(seg, SEG_FIRST, "--seg", "--recon", RECON_FIRST)
    model = DraemModel(DraemOptions(recon_width=recon_state[RECON_FIRST].shape[0],
                                    seg_width=seg_state[SEG_FIRST].shape[0]))
    check_state_dict(model.reconstructive.state_dict(), recon_state, recon,
                     f"DRAEM's reconstructive sub-network of width {model.options.recon_width}")
    check_state_dict(model.discriminative.state_dict(), seg_state, seg,
                     f"DRAEM's discriminative sub-network of width {model.options.seg_width}")
    model.reconstructive.load_state_dict(recon_state)
    model.discriminative.load_state_dict(seg_state)
    return model.eval()
