"""Convert the authors' released checkpoint pair (reconstructive + discriminative .pckl) into a run."""

from __future__ import annotations

from pathlib import Path

import torch

from draem.engine.run import (
    ModelInfo,
    RunFiles,
    build_model,
    check_state_dict,
    read_torch_file,
    save_model,
    versions,
)
from draem.errors import DraemError
from draem.files import write_json
from draem.models import DiscriminativeSubNetwork, ReconstructiveSubNetwork

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


def import_official(recon: str | Path, seg: str | Path, out: str | Path, image_size: int = 256) -> Path:
    """Write a run directory whose model is the authors' pair; their models expect BGR input."""
    recon, seg, files = Path(recon), Path(seg), RunFiles(Path(out))
    recon_state = _state_dict(recon, RECON_FIRST, "--recon", "--seg", SEG_FIRST)
    seg_state = _state_dict(seg, SEG_FIRST, "--seg", "--recon", RECON_FIRST)
    info = ModelInfo(recon_width=recon_state[RECON_FIRST].shape[0], seg_width=seg_state[SEG_FIRST].shape[0],
                     image_size=image_size, fit="resize", channel_order="BGR")
    check_state_dict(ReconstructiveSubNetwork(base_width=info.recon_width).state_dict(), recon_state, recon,
                     f"{info.recon_width} (reconstructive)")
    check_state_dict(DiscriminativeSubNetwork(base_channels=info.seg_width).state_dict(), seg_state, seg,
                     f"{info.seg_width} (discriminative)")
    if files.model.exists():
        raise DraemError(f"{files.model}: already exists; choose another --out")
    combined = {f"reconstructive.{k}": v for k, v in recon_state.items()}
    combined |= {f"discriminative.{k}": v for k, v in seg_state.items()}
    model = build_model(combined, info, recon)
    files.root.mkdir(parents=True, exist_ok=True)
    write_json(files.config, {"imported": {"recon": str(recon), "seg": str(seg), "channel_order": "BGR",
                                           "image_size": image_size}, "versions": versions()})
    save_model(files.model, model, info)
    return files.model
