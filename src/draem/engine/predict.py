"""Predict on new images: maps, overlays, masks and pass/fail decisions, streamed in batches."""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from draem.data.images import Placement, fit_to_square, list_images, map_to_original, read_image, valid_region
from draem.engine.calibrate import normalise
from draem.engine.devices import resolve_device
from draem.engine.inference import Predictor
from draem.engine.run import load_model
from draem.errors import DraemError
from draem.files import atomic_open, output_folder, write_bytes
from draem.report.overlay import ColourScale, map_to_png16, overlay, png_bytes, to_pil

log = logging.getLogger("draem")

COLUMNS = ("path", "score", "normalized_score", "decision", "map", "overlay", "mask", "backend", "error")
MAP_FORMATS = ("png", "npy")


@dataclass
class PredictConfig:
    """Settings of one prediction job."""

    run: str
    inputs: Sequence[str]
    out: str = "predictions"
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    workers: int = 0
    map_format: str = "png"
    backend: str = "torch"


@dataclass(frozen=True)
class InputImage:
    """An input file and the output name stem its results are written under."""

    path: Path
    name: str


def expand_inputs(inputs: Sequence[str]) -> list[InputImage]:
    """Files, folders (recursively) and glob patterns -> input images with unique output names."""
    found: list[InputImage] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [InputImage(p, str(p.relative_to(path).with_suffix(""))) for p in
                      list_images(path, recursive=True)]
        elif any(c in item for c in "*?[") and not path.exists():
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise DraemError(f"{item}: pattern matches no files")
            found += [InputImage(p, p.stem) for p in matches]
        else:
            found.append(InputImage(path, path.stem))
    if not found:
        raise DraemError(f"{', '.join(inputs)}: no images to predict on")
    seen: dict[str, int] = {}
    unique = []
    for image in found:
        count = seen.get(image.name, 0)
        seen[image.name] = count + 1
        unique.append(image if count == 0 else InputImage(image.path, f"{image.name}_{count}"))
    return unique


class PredictImages(Dataset):
    """Input images -> fitted tensor, valid region, original image and placement; errors as text."""

    def __init__(self, images: Sequence[InputImage], size: int, fit: str, resize: str = "antialias") -> None:
        self.images, self.size, self.fit, self.resize = list(images), size, fit, resize

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        try:
            original = read_image(self.images[index].path)
        except DraemError as exc:
            return {"index": index, "error": str(exc)}
        fitted, where = fit_to_square(original, self.size, self.fit, self.resize)
        return {"index": index, "image": fitted, "valid": valid_region(where, self.size),
                "original": original, "placement": where}


def collate(items: list[dict]) -> dict:
    """Stack the readable images; pass the rest through as lists."""
    good = [i for i in items if "error" not in i]
    batch: dict = {"failed": [(i["index"], i["error"]) for i in items if "error" in i],
                   "index": [i["index"] for i in good], "original": [i["original"] for i in good],
                   "placement": [i["placement"] for i in good]}
    if good:
        batch["image"] = torch.stack([i["image"] for i in good])
        batch["valid"] = torch.stack([i["valid"] for i in good])
    return batch


@dataclass
class PredictionResult:
    """Everything predicted for one image, at its original resolution."""

    score: float
    normalized_score: float | None
    defective: bool | None
    anomaly_map: torch.Tensor
    mask: torch.Tensor | None


def results_for_batch(predictor: Predictor, images: torch.Tensor, valid: torch.Tensor,
                      placements: Sequence[Placement]) -> list[PredictionResult]:
    """Score a batch and turn each map into a result at its image's original size."""
    maps, scores = predictor(images, valid)
    thresholds = predictor.loaded.info.thresholds
    results = []
    for anomaly_map, score, where in zip(maps.float().cpu(), scores.float().cpu(), placements, strict=True):
        full_map = map_to_original(anomaly_map, where).clamp(0, 1)
        if thresholds:
            normalized = normalise(score, thresholds["image"], thresholds["image_low"],
                                   thresholds["image_high"]).item()
            results.append(PredictionResult(score.item(), normalized, bool(score >= thresholds["image"]),
                                            full_map, full_map >= thresholds["pixel"]))
        else:
            results.append(PredictionResult(score.item(), None, None, full_map, None))
    return results


def _write_outputs(out: Path, name: str, original: torch.Tensor, result: PredictionResult,
                   map_format: str, scale: ColourScale) -> dict[str, str]:
    files = {"map": out / f"{name}_map.{map_format}", "overlay": out / f"{name}_overlay.png"}
    files["map"].parent.mkdir(parents=True, exist_ok=True)
    if map_format == "npy":
        buffer = io.BytesIO()
        np.save(buffer, result.anomaly_map.numpy().astype(np.float32))
        write_bytes(files["map"], buffer.getvalue())
    else:
        write_bytes(files["map"], png_bytes(map_to_png16(result.anomaly_map)))
    write_bytes(files["overlay"], png_bytes(to_pil(overlay(original, result.anomaly_map, scale))))
    if result.mask is not None:
        files["mask"] = out / f"{name}_mask.png"
        write_bytes(files["mask"], png_bytes(to_pil(result.mask.float())))
    return {k: str(v) for k, v in files.items()}


def _decision(defective: bool | None) -> str:
    return "" if defective is None else ("defective" if defective else "good")


def predict(config: PredictConfig) -> tuple[int, int]:
    """Predict on every input, write maps, overlays, masks, predictions.csv/.json; (done, failed)."""
    if config.map_format not in MAP_FORMATS:
        raise DraemError(f"--map-format {config.map_format}: expected one of {', '.join(MAP_FORMATS)}")
    images = expand_inputs(config.inputs)
    loaded = load_model(config.run)
    if not loaded.info.thresholds:
        log.warning("%s has no calibrated thresholds: no decisions or masks (run `draem calibrate`)",
                    loaded.path)
    predictor = Predictor(loaded, resolve_device(config.device), config.precision, config.backend)
    out = output_folder(config.out)
    loader = DataLoader(PredictImages(images, loaded.info.image_size, loaded.info.fit, loaded.info.resize),
                        batch_size=config.batch_size, num_workers=config.workers, collate_fn=collate)
    done = failed = 0
    with atomic_open(out / "predictions.csv") as csv_stream, atomic_open(out / "predictions.json") as js:
        text = io.TextIOWrapper(csv_stream, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        js.write(b"[\n")
        for row in _rows(loader, predictor, images, out, config.map_format):
            writer.writerow(row)
            record = {k: (None if v == "" else v) for k, v in row.items()}
            js.write((("" if done + failed == 0 else ",\n") + json.dumps(record)).encode())
            if row["error"]:
                failed += 1
                log.error("%s", row["error"])
            else:
                done += 1
        js.write(b"\n]\n")
        text.flush()
        text.detach()
    return done, failed


def _rows(loader: DataLoader, predictor: Predictor, images: Sequence[InputImage], out: Path,
          map_format: str) -> Iterator[dict]:
    empty = dict.fromkeys(COLUMNS, "") | {"backend": predictor.backend}
    scale = ColourScale.of(predictor.loaded.info.thresholds)
    for batch in tqdm(loader, desc="predict", unit="batch", dynamic_ncols=True):
        for index, error in batch["failed"]:
            yield empty | {"path": str(images[index].path), "error": error}
        if not batch["index"]:
            continue
        results = results_for_batch(predictor, batch["image"], batch["valid"], batch["placement"])
        for index, original, result in zip(batch["index"], batch["original"], results, strict=True):
            files = _write_outputs(out, images[index].name, original, result, map_format, scale)
            normalized = result.normalized_score
            yield empty | files | {
                "path": str(images[index].path), "score": round(result.score, 6),
                "normalized_score": "" if normalized is None else round(normalized, 6),
                "decision": _decision(result.defective)}
