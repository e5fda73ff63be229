"""DSR weights from files: the authors' released .pckl state dicts, and general models for `dsr --general-model`."""

from __future__ import annotations

from pathlib import Path

import torch

from draem.errors import DraemError
from draem.methods.dsr.networks import DiscreteLatentModel
from draem.weights import MODEL_FORMAT, check_state_dict, read_torch_file

GENERAL_PREFIXES = {"dsr-general": "vq.", "dsr": "networks.vq."}
"""Where each method's model.pt keeps the general model's weights."""

AUTHORS_CHANNELS = "BGR"
"""The authors train and test on OpenCV images, so their weights expect BGR input."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of one of the authors' .pckl files (a wrapping "state_dict" and "module." prefixes removed)."""
    state = read_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DraemError(f"{path}: not a PyTorch state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def latent_sizes(state: dict[str, torch.Tensor], path: Path) -> tuple[int, int, int]:
    """(codes, code width, hidden width) of a general model's state dict; a one-line error if it is none."""
    try:
        codes, width = state["_vq_vae_top._embedding.weight"].shape
        hidden = state["_encoder_b._conv_2.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise DraemError(f"{path}: not a DSR general appearance model (no codebook _vq_vae_top or encoder "
                         "_encoder_b)") from exc
    return int(codes), int(width), int(hidden)


def read_general_model(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A general model's state dict and the channel order it reads, from a `dsr-general` or `dsr` model.pt or
    the authors' vq_model_pretrained_128_4096.pckl."""
    payload = read_torch_file(path)
    if not (isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT):
        return read_state_dict(path), AUTHORS_CHANNELS
    method = payload.get("info", {}).get("method")
    if method not in GENERAL_PREFIXES:
        raise DraemError(f"{path}: a model of method {method}, not a DSR general model (dsr-general or dsr)")
    prefix = GENERAL_PREFIXES[method]
    state = {key.removeprefix(prefix): value for key, value in payload["state_dict"].items() if key.startswith(prefix)}
    return state, payload["info"].get("channel_order", "RGB")


def load_general_model(vq: DiscreteLatentModel, path: Path, channels: str) -> None:
    """Load a general model file into `vq`; one-line errors name the flags to pass when sizes or order differ."""
    state, order = read_general_model(path)
    codes, width, hidden = latent_sizes(state, path)
    expected = (*vq.quantizer_lo.codebook.shape, vq._encoder_b._conv_2.out_channels)
    if (codes, width, hidden) != expected:
        raise DraemError(f"{path}: the general model has {codes} codes of width {width} and hidden width {hidden}; "
                         f"pass --codes {codes} --code-width {width} --hidden-width {hidden}")
    if order != channels:
        raise DraemError(f"{path}: the general model reads {order} images; pass --general-channels {order}")
    check_state_dict(vq.state_dict(), state, path, "DSR's general appearance model")
    vq.load_state_dict(state)
