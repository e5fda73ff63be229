"""OpenVINO runtime for an exported graph: fp32, or bf16 where the CPU computes it natively."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from draem.deploy.onnx import check_graph_inputs, graph_feed
from draem.errors import DraemError

log = logging.getLogger("draem")

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def require_openvino() -> ModuleType:
    """The openvino module, or one line saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise DraemError("the openvino backend needs OpenVINO: pip install 'draem[openvino]'") from exc
    return openvino


class OpenVinoModel:
    """An exported model compiled by OpenVINO for the CPU (dynamic batch, latency hint), called like
    InferenceGraph."""

    def __init__(self, path: str | Path, precision: str) -> None:
        core = require_openvino().Core()
        try:
            graph = core.read_model(str(path))
        except Exception as exc:
            raise DraemError(f"{path}: cannot load ONNX model ({str(exc).splitlines()[0]})") from exc
        check_graph_inputs(path, [node.get_any_name() for node in graph.inputs])
        native = {name.lower() for name in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")}
        self.precision = precision if precision == "fp32" or precision in native else "fp32"
        if self.precision != precision:
            log.info("OpenVINO runs fp32 here: this CPU does not compute %s natively", precision)
        settings = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        self.request = core.compile_model(graph, "CPU", settings).create_infer_request()

    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.request.infer(graph_feed(images, valid))
        anomaly_map, score = (torch.from_numpy(np.array(outputs[output])) for output in self.request.model_outputs)
        return anomaly_map, score
