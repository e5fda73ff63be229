"""Throughput and memory of the methods on this machine, every figure of one run printed side by side.

    python benchmarks/speed.py                      # everything (about 20 minutes on 2 cores)
    python benchmarks/speed.py --only infer --networks narrow
    python benchmarks/speed.py --only infer --networks "" --batches 4   # the other methods alone
    python benchmarks/speed.py --only memory

Inference and training are timed at 256x256 for the full-size (128/64) and a narrow (32/16) DRAEM, and
for every other registered method at its full-size defaults (training: each method's own step, batch 8);
`--methods` picks among the other methods (`--methods none` for DRAEM alone).
`fp32 eager NCHW` is plain PyTorch, the baseline; `fp32 channels-last` is the exact path of
`draem test/predict --precision fp32` and their default on CPUs without native bf16; `bf16 channels-last`
is their default on CPUs with native bf16 (its rows are skipped elsewhere, where bf16 is emulated and slow);
`onnxruntime fp32` runs the exported graph (`--backend onnxruntime`), `openvino fp32/bf16` the same graph on
OpenVINO (`--backend openvino`, bf16 where native). `ceiling: fp32 convs` and `ceiling: bf16
convs` are PyTorch's channels-last convolutions alone (profiled): no path on PyTorch's kernels can pass them.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from draem import methods
from draem.engine.devices import autocast, cpu_has_native_bf16
from draem.engine.run import ModelInfo, load_model, save_model
from draem.methods.base import AnomalyModel, TrainBatch
from draem.methods.draem import DraemModel, DraemOptions
from draem.synthesis.simulator import simulate_anomalies
from draem.synthesis.sources import procedural_textures

SIZE = 256
CPU = torch.device("cpu")
TORCH_MODES = {"fp32 eager NCHW": ("fp32", False), "fp32 channels-last": ("fp32", True),
               "bf16 channels-last": ("bf16", True)}
NATIVE_BF16 = cpu_has_native_bf16()
PRECISIONS = ("fp32", "bf16") if NATIVE_BF16 else ("fp32",)
MODES = {mode: setting for mode, setting in TORCH_MODES.items() if setting[0] in PRECISIONS}


def images_per_second(images_per_call: int, call: Callable[[], object], seconds: float, min_calls: int = 2) -> float:
    """Images per second over repeated calls after one warm-up call."""
    call()
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < seconds:
        call()
        calls += 1
    return images_per_call * calls / (time.perf_counter() - started)


def convolution_seconds(call: Callable[[], object], calls: int = 3) -> float:
    """Seconds of a call spent in convolutions (forward and backward kernels, profiled): the least over `calls`
    calls after one warm-up call."""
    call()
    seconds = []
    for _ in range(calls):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            call()
        seconds.append(sum(e.self_cpu_time_total for e in profile.key_averages() if "conv" in e.key) / 1e6)
    return min(seconds)


def row(what: str, network: str, mode: str, batch: int, value: float, baseline: float | None) -> None:
    ratio = f"{value / baseline:>7.2f}x" if baseline else f"{'':>8}"
    print(f"{what:<10}{network:<22}{mode:<22}{batch:>6}{value:>11.2f}{ratio}", flush=True)


def torch_inference(model: AnomalyModel, batch: int, precision: str, channels_last: bool) -> Callable[[], None]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).eval()
    images = torch.rand(batch, 3, SIZE, SIZE).contiguous(memory_format=fmt)

    @torch.inference_mode()
    def call() -> None:
        with autocast(CPU, precision):
            model.predict(images)

    return call


def fp32_graph(run: Path) -> Path:
    """The run's exported graph, unchecked: an untrained DSR's quantiser meets near-ties that the check would flag."""
    from draem.deploy.onnx import export_onnx

    path = run / "model.onnx"
    if not path.exists():
        export_onnx(run, path, check=False)
    return path


def onnx_inference(run: Path, batch: int) -> Callable[[], None]:
    from draem.deploy.onnx import OnnxRuntimeModel

    runtime = OnnxRuntimeModel(fp32_graph(run))
    images = torch.rand(batch, 3, SIZE, SIZE)
    return lambda: runtime(images)


def openvino_inference(run: Path, batch: int, precision: str) -> Callable[[], None]:
    from draem.deploy.openvino import OpenVinoModel

    runtime = OpenVinoModel(fp32_graph(run), precision)
    images = torch.rand(batch, 3, SIZE, SIZE)
    return lambda: runtime(images)


def int8_inference(run: Path, batch: int, calibration: list[Path], image_side: bool = True) -> Callable[[], None]:
    """The int8 graph as exported (image-side and last convolutions float32) or with only the last one float."""
    from draem.data.datasets import TrainImages
    from draem.deploy.onnx import OnnxRuntimeModel
    from draem.deploy.quantize import quantize

    path = run / ("model.int8.onnx" if image_side else "model.int8-tail.onnx")
    if not path.exists():
        quantize(fp32_graph(run), path, TrainImages(calibration, SIZE, "resize"), image_side=image_side)
    runtime = OnnxRuntimeModel(path)
    images = torch.rand(batch, 3, SIZE, SIZE)
    return lambda: runtime(images)


def random_images(folder: Path, count: int) -> list[Path]:
    """Random RGB images on disk (to calibrate int8 graphs on, whose speed does not depend on it, or to predict)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"{index}.png" for index in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    return paths


def training_step(model: AnomalyModel, batch: int, precision: str, channels_last: bool) -> Callable[[], None]:
    """One step of the method's own training step (simulation and losses included), as the engine runs it."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    stage = model.stages(10_000)[0]
    images = torch.rand(batch, 3, SIZE, SIZE).contiguous(memory_format=fmt)
    sources = torch.rand(batch, 3, SIZE, SIZE) if model.uses_anomaly_sources else None
    generator = torch.Generator().manual_seed(0)

    def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def step() -> None:
        model.training_step(TrainBatch(images, sources, generator, 0, fmt, precision), stage, update)

    return step


def make_run(folder: Path, model: AnomalyModel) -> Path:
    save_model(folder / "model.pt", model.eval(), ModelInfo.of(model, SIZE))
    return folder


def networks_to_time(networks: list[str], others: list[str]) -> dict[str, tuple[type[AnomalyModel], object]]:
    """Label -> (method, options): DRAEM at the asked presets, then the other asked methods at their defaults."""
    sized = {name: DraemOptions(**DraemModel.presets[name]) for name in networks if name}
    chosen = {f"{name} {options.recon_width}/{options.seg_width}": (DraemModel, options)
              for name, options in sized.items()}
    for name in others:
        chosen[f"{name} defaults"] = (methods.get(name), methods.get(name).Options())
    return chosen


def inference(models: dict[str, tuple[type[AnomalyModel], object]], batches: list[int], seconds: float,
              work: Path) -> None:
    print(f"{'what':<10}{'network':<22}{'mode':<22}{'batch':>6}{'images/s':>11}{'vs base':>8}")
    calibration = random_images(work / "calibration", 8)
    for label, (method, options) in models.items():
        torch.manual_seed(0)
        run = make_run(work / label.replace(" ", "-").replace("/", "-"), method(options))
        for batch in batches:
            baseline = None
            for mode, (precision, channels_last) in MODES.items():
                value = images_per_second(batch, torch_inference(load_model(run).model, batch, precision,
                                                                 channels_last), seconds)
                baseline = baseline or value
                row("infer", label, mode, batch, value, baseline)
            for precision in PRECISIONS:
                in_convolutions = convolution_seconds(torch_inference(load_model(run).model, batch, precision, True))
                row("infer", label, f"ceiling: {precision} convs", batch, batch / in_convolutions, baseline)
            row("infer", label, "onnxruntime fp32", batch, images_per_second(batch, onnx_inference(run, batch),
                                                                             seconds), baseline)
            for precision in PRECISIONS:
                row("infer", label, f"openvino {precision}", batch,
                    images_per_second(batch, openvino_inference(run, batch, precision), seconds), baseline)
            for image_side, mode in ((True, "onnxruntime int8"), (False, "int8, image side int8")):
                row("infer", label, mode, batch,
                    images_per_second(batch, int8_inference(run, batch, calibration, image_side), seconds), baseline)


def training(models: dict[str, tuple[type[AnomalyModel], object]], seconds: float) -> None:
    for label, (method, options) in models.items():
        baseline = None
        for mode, (precision, channels_last) in MODES.items():
            torch.manual_seed(0)
            value = images_per_second(8, training_step(method(options), 8, precision, channels_last), seconds)
            baseline = baseline or value
            row("train", label, mode, 8, value, baseline)


def simulator(seconds: float) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, SIZE, SIZE)
    row("simulate", "-", "texture folder", 8,
        images_per_second(8, lambda: simulate_anomalies(images, images.flip(0), generator), seconds), None)
    row("simulate", "-", "procedural", 8, images_per_second(
        8, lambda: simulate_anomalies(images, procedural_textures(8, SIZE, generator), generator), seconds), None)


# VmHWM of the child's own address space: ru_maxrss would also count the benchmark process it was forked from.
PEAK_OF_PREDICT = """import sys
from draem.cli import main
status = main(sys.argv[1:])
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")))
sys.exit(status)
"""


def peak_memory(work: Path) -> None:
    """Peak resident memory of `draem predict` on the full-size model, per batch size and precision."""
    torch.manual_seed(0)
    run = make_run(work / "memory", DraemModel(DraemOptions(**DraemModel.presets["full"])))
    inputs = work / "inputs"
    random_images(inputs, 16)
    for precision in PRECISIONS:
        for batch in (1, 8):
            arguments = ["predict", "--run", str(run), str(inputs), "--out", str(work / f"out{batch}{precision}"),
                         "--batch-size", str(batch), "--precision", precision]
            result = subprocess.run([sys.executable, "-c", PEAK_OF_PREDICT, *arguments], capture_output=True,
                                    text=True, check=False)
            peaks = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("VmHWM")]
            peak_mb = int(peaks[-1]) / 1024 if peaks else float("nan")
            state = "ok" if result.returncode == 0 else f"exit status {result.returncode}"
            print(f"{'memory':<10}{'full 128/64':<22}{'predict ' + precision:<22}{batch:>6}"
                  f"{peak_mb:>9.0f} MB peak RSS ({state})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("infer", "train", "sim", "memory"))
    parser.add_argument("--networks", default="full,narrow")
    others = [name for name in methods.available() if name != "draem"]
    parser.add_argument("--methods", nargs="+", default=others, choices=[*others, "none"],
                        help="the other methods to time at their defaults")
    parser.add_argument("--batches", default="1,4,8", help="inference batch sizes")
    parser.add_argument("--seconds", type=float, default=8.0, help="minimum timing per figure")
    args = parser.parse_args()
    models = networks_to_time(args.networks.split(","), [name for name in args.methods if name != "none"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"native bf16: {NATIVE_BF16}, {SIZE}x{SIZE}")
    if not NATIVE_BF16:
        print("bf16 rows skipped: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is emulated and "
              "several times slower than fp32; draem runs fp32 here")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.only in (None, "infer"):
            inference(models, [int(b) for b in args.batches.split(",")], args.seconds, work)
        if args.only in (None, "train"):
            training(models, args.seconds)
        if args.only in (None, "sim"):
            simulator(args.seconds)
        if args.only in (None, "memory"):
            peak_memory(work)


if __name__ == "__main__":
    main()
