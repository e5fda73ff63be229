"""How far the fast inference paths move a trained model's results: metrics and the largest map difference.

    python benchmarks/fast_path_accuracy.py --run runs/mtd --data mtd --out fast-paths [--keep-float 1 2]

Each path is tested like `draem test --backend ... --precision ...` on a copy of the run's model.pt under --out
(the run itself is not written to): PyTorch bf16 (where the CPU has native bf16), onnxruntime fp32, OpenVINO fp32
and bf16 (where native), and int8 graphs with 1, 2... of their last convolutions kept in float32, each with and
without the convolutions that read the image (the default keeps them), all against PyTorch fp32. Printed: every
metric's change, and the largest absolute difference of anomaly maps and of image scores on --map-images test
images spread over the test set.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from draem.data.catalog import select_dataset
from draem.data.datasets import LabelledImages
from draem.deploy.quantize import export_int8, run_training_images
from draem.engine.devices import cpu_has_native_bf16
from draem.engine.evaluate import METRIC_NAMES, EvaluationConfig, evaluate
from draem.engine.inference import Predictor
from draem.engine.run import load_model


def copy_of_run(run: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "model.pt", folder / "model.pt")
    return folder


def maps_and_scores(run: Path, data: str, category: str | None, backend: str, precision: str, count: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps and scores of `count` test images spread over the test set."""
    loaded = load_model(run)
    samples = select_dataset(data, category).test_samples()
    samples = [samples[i] for i in torch.linspace(0, len(samples) - 1, min(count, len(samples))).round().long()]
    images = LabelledImages(samples, loaded.info.image_size, loaded.info.fit, loaded.info.resize)
    predictor = Predictor(loaded, torch.device("cpu"), precision, backend)
    maps, scores = zip(*[(m, s) for _, m, s in predictor.run(DataLoader(images, batch_size=8))], strict=True)
    return torch.cat(maps), torch.cat(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--category")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--map-images", type=int, default=64, help="test images for the map comparison")
    parser.add_argument("--keep-float", type=int, nargs="*", default=[1],
                        help="int8 variants: how many of the last convolutions stay float32 (none: no int8)")
    args = parser.parse_args()
    training = run_training_images(args.run)
    variants = {"pytorch fp32": ("torch", "fp32", copy_of_run(args.run, args.out / "torch"))}
    if cpu_has_native_bf16():
        variants["pytorch bf16"] = ("torch", "bf16", copy_of_run(args.run, args.out / "bf16"))
    variants["onnxruntime fp32"] = ("onnxruntime", "fp32", copy_of_run(args.run, args.out / "onnx"))
    for precision in ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",):
        variants[f"openvino {precision}"] = ("openvino", precision, copy_of_run(args.run, args.out / f"ov-{precision}"))
    for keep in args.keep_float:
        for image_side in (True, False):
            folder = copy_of_run(args.run, args.out / f"int8-float-tail-{keep}{'-image-side' * image_side}")
            export_int8(folder, folder / "model.int8.onnx", training, keep_float=keep, image_side=image_side)
            variants[f"int8, {'image side + ' * image_side}last {keep} fp32"] = ("onnxruntime-int8", "fp32", folder)
    results = {}
    for label, (backend, precision, folder) in variants.items():
        metrics = evaluate(EvaluationConfig(run=str(folder), data=args.data, category=args.category, out=str(folder),
                                            precision=precision, backend=backend))["overall"]
        results[label] = (metrics, *maps_and_scores(folder, args.data, args.category, backend, precision,
                                                    args.map_images))
    reference, reference_maps, reference_scores = results["pytorch fp32"]
    print(f"{'path':<34}" + "".join(f"{name:>14}" for name in METRIC_NAMES) + f"{'max |map|':>11}{'max |score|':>12}")
    for label, (metrics, maps, scores) in results.items():
        deltas = "".join(f"{metrics[n] - reference[n]:>+14.4f}" if metrics[n] is not None else f"{'n/a':>14}"
                         for n in METRIC_NAMES)
        print(f"{label:<34}{deltas}{float((maps - reference_maps).abs().max()):>11.4f}"
              f"{float((scores - reference_scores).abs().max()):>12.4f}")
    print("pytorch fp32 metrics: " + ", ".join(f"{n} {reference[n]:.4f}" for n in METRIC_NAMES))


if __name__ == "__main__":
    main()
