"""ONNX export of the whole inference graph (image -> anomaly map, image score) and its runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from draem.engine.run import LoadedModel, load_model
from draem.errors import DraemError
from draem.files import write_bytes

log = logging.getLogger("draem")

OPSET = 18
GRAPH_INPUTS = ("image", "valid")


class InferenceGraph(nn.Module):
    """RGB images (B, 3, S, S) in [0, 1] and their valid regions (B, S, S; False on padding) -> anomaly maps
    (B, S, S) and image scores (B,), each method's own score."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.model = loaded.model
        self.bgr = loaded.info.channel_order == "BGR"
        self.window = loaded.info.score_window
        self.eval()

    def forward(self, images: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bgr:
            images = images[:, [2, 1, 0]]
        return self.model.predict(images, valid, self.window)


def everywhere(images: torch.Tensor) -> torch.Tensor:
    """The valid region of unpadded images: every pixel."""
    return torch.ones(images.shape[0], *images.shape[2:], dtype=torch.bool)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise DraemError(f"ONNX export needs the onnx extras ({exc.name} is missing): "
                         "pip install 'draem[onnx]'") from exc


def export_onnx(run: str | Path, out: str | Path, check: bool = True) -> Path:
    """Export a run's model to one ONNX file, (image, valid) -> (anomaly_map, score) with a dynamic batch axis;
    check it with onnxruntime."""
    _require_onnx()
    loaded = load_model(run)
    graph = InferenceGraph(loaded).float()
    size = loaded.info.image_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(graph, (example, everywhere(example)), dynamo=True, input_names=list(GRAPH_INPUTS),
                                output_names=["anomaly_map", "score"], opset_version=OPSET,
                                dynamic_shapes={"images": {0: batch}, "valid": {0: batch}}, external_data=False,
                                verbose=False)
    out = Path(out)
    write_bytes(out, program.model_proto.SerializeToString())
    if check:
        error = max_difference(graph, OnnxRuntimeModel(out), example[:1].repeat(3, 1, 1, 1))
        log.info("onnxruntime vs PyTorch on 3 images: max abs difference %.2e", error)
        tolerance = loaded.model.float32_tolerance
        if error > tolerance:
            raise DraemError(f"{out}: onnxruntime differs from PyTorch by {error:.2e} (> {tolerance:g})")
    return out


class OnnxRuntimeModel:
    """An exported model on onnxruntime's CPU provider, called like InferenceGraph."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise DraemError("the onnxruntime backend needs onnxruntime: pip install 'draem[onnx]'") from exc
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DraemError(f"{path}: cannot load ONNX model ({str(exc).splitlines()[0]})") from exc
        check_graph_inputs(path, [node.name for node in self.session.get_inputs()])

    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_map, score = self.session.run(None, dict(zip(GRAPH_INPUTS, graph_feed(images, valid), strict=True)))
        return torch.from_numpy(anomaly_map), torch.from_numpy(score)


def check_graph_inputs(path: str | Path, inputs: list[str]) -> None:
    """One line unless a graph takes (image, valid), as this draem exports it."""
    if inputs != list(GRAPH_INPUTS):
        raise DraemError(f"{path}: a graph with inputs {inputs}, not (image, valid): exported by an older "
                         "draem; delete it or export the run again")


def graph_feed(images: torch.Tensor, valid: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """An exported graph's inputs: float32 images and boolean valid regions (every pixel when not given)."""
    valid = everywhere(images) if valid is None else valid
    return (np.ascontiguousarray(images.detach().float().cpu().numpy()),
            np.ascontiguousarray(valid.detach().bool().cpu().numpy()))


@torch.inference_mode()
def max_difference(graph: InferenceGraph, runtime: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                   images: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Largest absolute difference of maps and scores between PyTorch and a runtime of the exported graph."""
    valid = everywhere(images) if valid is None else valid
    expected = graph(images, valid)
    got = runtime(images, valid)
    return max(float((a - b).abs().max()) for a, b in zip(expected, got, strict=True))
