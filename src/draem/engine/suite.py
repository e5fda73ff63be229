"""Every category of a dataset: train them in turn or one per process, test them into the paper's table."""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from draem.data.catalog import find_datasets
from draem.engine.config import TrainConfig
from draem.engine.distributed import Cluster
from draem.engine.evaluate import EvaluationConfig, evaluate
from draem.engine.run import RunFiles
from draem.engine.train import train
from draem.errors import DraemError
from draem.files import write_text

log = logging.getLogger("draem")

TABLE_COLUMNS = (("image_auroc", "Image AUROC"), ("pixel_auroc", "Pixel AUROC"), ("pixel_ap", "Pixel AP"),
                 ("aupro", "AUPRO"))


PROTOCOL = ("Protocol (the paper's): each category trains on all its training images (no held-out calibration "
            "split) and is tested in fp32 on its whole test set.")


def train_all(config: TrainConfig, parallel_categories: bool = False) -> list[Path]:
    """Train every category under config.data into config.out/<category> on all its training images.

    With `parallel_categories` under torchrun, process r trains categories r, r + N, ... on its own.
    """
    names = [d.name for d in find_datasets(config.data)]
    config = replace(config, validation_fraction=0.0)
    log.info(PROTOCOL)
    rank, world = 0, 1
    if parallel_categories:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if config.device in ("auto", "cuda") and torch.cuda.is_available():
            config = replace(config, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    models = []
    for name in names[rank::world]:
        log.info("category %s (%d of %d)", name, names.index(name) + 1, len(names))
        run = replace(config, category=name, out=str(Path(config.out) / name))
        models.append(train(run, Cluster() if parallel_categories else None))
    return models


def summary_table(results: dict[str, dict]) -> list[list[str]]:
    """Rows of the paper's layout: a header, one row per category, then the mean."""
    rows = [["Category", *(title for _, title in TABLE_COLUMNS)]]
    for name, metrics in results.items():
        rows.append([name, *(_cell(metrics["overall"][key]) for key, _ in TABLE_COLUMNS)])
    means = []
    for key, _ in TABLE_COLUMNS:
        values = [m["overall"][key] for m in results.values() if m["overall"][key] is not None]
        means.append(_cell(sum(values) / len(values) if values else None))
    return [*rows, ["Mean", *means]]


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown(rows: list[list[str]]) -> str:
    """A Markdown table of the rows (first row is the header)."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"


def test_all(config: EvaluationConfig) -> Path:
    """Evaluate config.run/<category> on every category of config.data; write benchmark.csv/.md."""
    runs = Path(config.run)
    config = replace(config, precision="fp32")
    log.info(PROTOCOL)
    results = {}
    for dataset in find_datasets(config.data):
        run = runs / dataset.name
        if not RunFiles(run).model.exists():
            raise DraemError(f"{RunFiles(run).model}: no trained model for category {dataset.name}")
        results[dataset.name] = evaluate(replace(config, run=str(run), category=dataset.name, out=None))
    rows = summary_table(results)
    table = io.StringIO()
    csv.writer(table).writerows(rows)
    write_text(runs / "benchmark.csv", table.getvalue())
    write_text(runs / "benchmark.md", markdown(rows) + "\n" + PROTOCOL + "\n")
    print(markdown(rows) + "\n" + PROTOCOL)
    return runs / "benchmark.md"
