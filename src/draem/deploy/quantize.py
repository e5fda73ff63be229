"""int8 inference: static QDQ quantisation of an exported graph, calibrated on defect-free training images only."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from draem.data.catalog import select_dataset
from draem.data.datasets import TrainImages
from draem.deploy.onnx import OnnxRuntimeModel, everywhere, export_onnx
from draem.engine.run import RunFiles, load_model
from draem.errors import DraemError

log = logging.getLogger("draem")

QUANTISED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Only these run in int8; pooling, the mean filter, softmax and the score stay float32."""
FLOAT_TAIL = 1
"""How many of the graph's last convolutions stay float32 (the layer that makes the map's logits)."""
CONVOLUTIONS = ("Conv", "ConvTranspose")
CALIBRATION_IMAGES = 32


def run_training_images(run: str | Path) -> list[Path]:
    """The defect-free training images a run was trained on (from its config.json); one line if unknown."""
    files = RunFiles(Path(run))
    if not files.config.exists():
        raise DraemError(f"{files.config}: no training configuration to find calibration images in; pass "
                         "--calibration DIR (a folder of defect-free images)")
    train = json.loads(files.config.read_text())["train"]
    return select_dataset(train["data"], train["category"], train["normal"]).train_images()


def evenly_spaced(paths: list[Path], count: int) -> list[Path]:
    """Up to `count` paths spread evenly over a sorted list (deterministic, no labels involved)."""
    paths = sorted(paths)
    if len(paths) <= count:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]


class _Batches:
    """onnxruntime's calibration reader: one image at a time, fitted as at inference, all pixels valid."""

    def __init__(self, images: TrainImages) -> None:
        self.items: Iterator[dict[str, np.ndarray]] = (self._feed(images[i, 0]["image"]) for i in range(len(images)))

    @staticmethod
    def _feed(image: torch.Tensor) -> dict[str, np.ndarray]:
        batch = image[None]
        return {"image": batch.numpy(), "valid": everywhere(batch).numpy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def float_convolutions(graph_path: Path, tail: int, image_side: bool = True) -> list[str]:
    """Names of the convolutions that stay float32: the last `tail` in graph order and, with `image_side`, those
    that read the input image with no convolution in between (each network's first layer, where one int8 step
    is a visible change of the pixels it compares)."""
    import onnx

    graph = onnx.load(str(graph_path)).graph
    producer = {output: node for node in graph.node for output in node.output}
    image = graph.input[0].name

    def reads_image(tensor: str) -> bool:
        """Whether `tensor` comes from the input image through nodes that are not convolutions."""
        pending, seen = [tensor], set()
        while pending:
            name = pending.pop()
            if name == image:
                return True
            node = producer.get(name)
            if name in seen or node is None or node.op_type in CONVOLUTIONS:
                continue
            seen.add(name)
            pending.extend(node.input)
        return False

    convolutions = [node for node in graph.node if node.op_type in CONVOLUTIONS]
    chosen = {node.name for node in convolutions[len(convolutions) - tail:]} if tail else set()
    if image_side:
        chosen |= {node.name for node in convolutions if reads_image(node.input[0])}
    return [node.name for node in convolutions if node.name in chosen]


def quantize(graph_path: Path, out: Path, images: TrainImages, keep_float: int = FLOAT_TAIL,
             image_side: bool = True) -> Path:
    """Write the int8 QDQ version of an fp32 graph: per-channel int8 weights, uint8 activations calibrated
    (min-max) on `images`; `float_convolutions` stay float32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(handle)
    try:
        quantize_static(str(graph_path), temporary, _Batches(images), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=list(QUANTISED_OPS),
                        nodes_to_exclude=float_convolutions(graph_path, keep_float, image_side))
        os.replace(temporary, out)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return out


def export_int8(run: str | Path, out: str | Path, calibration: list[Path] | None = None,
                count: int = CALIBRATION_IMAGES, keep_float: int = FLOAT_TAIL, image_side: bool = True) -> Path:
    """Export a run to an int8 ONNX graph calibrated on `count` of its training images (or of `calibration`),
    and log how far its maps are from the fp32 graph's on those images."""
    loaded = load_model(run)
    paths = evenly_spaced(calibration if calibration is not None else run_training_images(run), count)
    info = loaded.info
    images = TrainImages(paths, info.image_size, info.fit, resize=info.resize)
    out = Path(out)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = export_onnx(run, Path(scratch) / "model.onnx")
        quantize(fp32, out, images, keep_float, image_side)
        batch = torch.stack([images[i, 0]["image"] for i in range(min(len(images), 4))])
        exact, fast = OnnxRuntimeModel(fp32)(batch), OnnxRuntimeModel(out)(batch)
    log.info("int8 graph calibrated on %d training images; on 4 of them its maps differ from fp32 by at most "
             "%.3f and its scores by %.3f", len(paths), float((exact[0] - fast[0]).abs().max()),
             float((exact[1] - fast[1]).abs().max()))
    return out
