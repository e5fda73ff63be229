"""Run a trained model over batches of images: the one inference path of test, predict and calibrate."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from draem.engine.devices import autocast, resolve_precision
from draem.engine.run import LoadedModel
from draem.errors import DraemError

if TYPE_CHECKING:
    from draem.deploy.onnx import OnnxRuntimeModel
    from draem.deploy.openvino import OpenVinoModel

log = logging.getLogger("draem")

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "openvino")


@dataclass
class Predictor:
    """A loaded model on a device, channels-last, in fp32 or bf16 ('auto': bf16 where native).

    The onnxruntime backend runs the run's model.onnx (exported on first use) in fp32 on the CPU;
    onnxruntime-int8 runs model.int8.onnx (quantised on first use, calibrated on the run's training images);
    openvino runs model.onnx in fp32 or, where the CPU computes it natively, bf16.
    """

    loaded: LoadedModel
    device: torch.device
    precision: str = "auto"
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise DraemError(f"--backend {self.backend}: expected one of {', '.join(BACKENDS)}")
        self.precision = resolve_precision(self.precision, self.device)
        self.model = self.loaded.model.to(self.device, memory_format=torch.channels_last).eval()
        self.runtime = None
        if self.backend != "torch":
            self.runtime = self._graph_runtime()

    def _graph_runtime(self) -> OnnxRuntimeModel | OpenVinoModel:
        """The run's exported graph (exported or quantised on first use) on the chosen runtime."""
        from draem.deploy.onnx import OnnxRuntimeModel, export_onnx
        from draem.deploy.openvino import OpenVinoModel, require_openvino
        from draem.deploy.quantize import export_int8

        if self.backend == "openvino":
            require_openvino()  # before exporting, so that a missing runtime stops the command at once
        int8 = self.backend == "onnxruntime-int8"
        path = self.loaded.path.parent / ("model.int8.onnx" if int8 else "model.onnx")
        if not path.exists():
            log.info("exporting %s to %s for %s", self.loaded.path, path, self.backend)
            (export_int8 if int8 else export_onnx)(self.loaded.path.parent, path)
        if self.backend == "openvino":
            runtime = OpenVinoModel(path, self.precision)
            self.precision = runtime.precision
            return runtime
        self.precision = "int8" if int8 else "fp32"
        return OnnxRuntimeModel(path)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, S, S) and image scores (B,) for fitted RGB images (B, 3, S, S) in [0, 1]."""
        if self.runtime is not None:
            return self.runtime(images, valid)
        images = images.to(self.device, non_blocking=True)
        if self.loaded.info.channel_order == "BGR":
            images = images.flip(1)
        images = images.contiguous(memory_format=torch.channels_last)
        if valid is not None:
            valid = valid.to(self.device)
        with autocast(self.device, self.precision):
            return self.model.predict(images, valid, self.loaded.info.score_window)

    def run(self, batches: Iterable[dict[str, torch.Tensor]]
            ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]:
        """Yield (batch, maps, scores) on the CPU for each batch of a loader."""
        for batch in batches:
            maps, scores = self(batch["image"], batch.get("valid"))
            yield batch, maps.float().cpu(), scores.float().cpu()
