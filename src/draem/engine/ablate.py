"""A method's ablation study: train and test each row of its paper's ablation table on one category."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from draem import methods
from draem.engine.config import TrainConfig, prepare
from draem.engine.evaluate import EvaluationConfig, evaluate
from draem.engine.recipe import default_recipe
from draem.engine.run import RunFiles
from draem.engine.suite import markdown
from draem.engine.train import train
from draem.errors import DraemError
from draem.files import write_text
from draem.methods.base import AblationRow

log = logging.getLogger("draem")

FIGURES = ("image_auroc", "pixel_auroc", "pixel_ap")
CSV_HEADER = ("row", "label", "method", "columns", "steps", *FIGURES, *(f"paper_{name}" for name in FIGURES),
              "status", "note")
MD_HEADER = ("Row", "Method", "Checked columns", "Steps", "Det.", "Loc.", "Paper Det.", "Paper Loc.", "Note")


@dataclass
class AblationConfig:
    """Which rows of which method's table, where their runs go, and the training settings every row shares
    (`train`: its data, category, budget, sizes, seed, device; its out, method, options and source are the rows')."""

    train: TrainConfig
    out: str
    rows: list[str] | None = None
    natural_images: str | None = None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.train.method


@dataclass
class RowResult:
    """A row's outcome: its overall metrics and trained steps, or why it was not run."""

    row: AblationRow
    metrics: dict[str, Any] | None = None
    steps: int | None = None
    not_run: str = ""


def select_rows(method: str, names: list[str] | None) -> list[AblationRow]:
    """The rows of the method's ablation table named in `names` (all when None), in the table's order."""
    table = methods.get(method).ablation_rows
    if not table:
        raise DraemError(f"--method {method}: this method has no ablation table")
    known = [row.name for row in table]
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        raise DraemError(f"--rows {unknown[0]}: unknown row; expected some of {', '.join(known)}")
    return [row for row in table if names is None or row.name in names]


def parse_setting(kind: Any, key: str, text: str) -> Any:
    """The text of `--set key=text` as a value of the option's type."""
    try:
        if kind is bool:
            return {"true": True, "false": False}[text.lower()]
        if kind == tuple[float, ...]:
            return tuple(float(part) for part in text.split(","))
        return kind(text)
    except (KeyError, ValueError) as exc:
        expected = {bool: "true or false", tuple[float, ...]: "comma-separated numbers"}.get(kind, kind.__name__)
        raise DraemError(f"--set {key}={text}: expected {expected}") from exc


def row_options(row: AblationRow, settings: dict[str, str]) -> dict[str, Any]:
    """The row's options plus the --set values that its method has an option for."""
    hints = typing.get_type_hints(methods.get(row.method).Options)
    return {**row.options, **{key: parse_setting(hints[key], key, text) for key, text in settings.items()
                              if key in hints}}


def check_settings(rows: list[AblationRow], settings: dict[str, str]) -> None:
    """One-line error for a --set that a row varies itself or that no row's method has."""
    for key in settings:
        varied = [row.name for row in rows if key in row.options]
        if varied:
            raise DraemError(f"--set {key}: row {varied[0]} sets it itself (the ablation varies it)")
        if not any(key in {f.name for f in dataclasses.fields(methods.get(row.method).Options)} for row in rows):
            raise DraemError(f"--set {key}: no option of that name in the methods of the chosen rows")


def row_source(row: AblationRow, config: AblationConfig) -> str | None:
    """The anomaly-source folder the row trains with (None: none, or the built-in textures)."""
    return {"textures": config.train.anomaly_source, "natural": config.natural_images}.get(row.anomaly_source)


def train_config(row: AblationRow, options: dict[str, Any], config: AblationConfig) -> TrainConfig:
    """The row's training run in out/<row>: all training images, resumed where it stopped."""
    return replace(config.train, out=str(Path(config.out) / row.name), method=row.method, options=options,
                   anomaly_source=row_source(row, config), validation_fraction=0.0, resume=True)


def run_row(row: AblationRow, run: TrainConfig, config: AblationConfig) -> RowResult:
    """Train the row unless its model exists, then test it in fp32 on the whole test set."""
    files = RunFiles(Path(run.out))
    if files.model.exists():
        log.info("row %s: already trained in %s", row.name, files.root)
    else:
        log.info("row %s: training into %s", row.name, files.root)
        train(run)
    metrics = evaluate(EvaluationConfig(run=run.out, data=run.data, category=run.category,
                                        batch_size=run.batch_size, device=run.device, precision="fp32",
                                        workers=run.workers))
    steps = json.loads(files.config.read_text())["total_steps"]
    return RowResult(row, metrics["overall"], steps)


def ablate(config: AblationConfig) -> Path:
    """Train and test each chosen row into out/<row>; write ablation.csv and ablation.md; return the .md."""
    rows = select_rows(config.method, config.rows)
    runnable = [row for row in rows if row.method is not None]
    check_settings(runnable, config.settings)
    runs = {row.name: train_config(row, row_options(row, config.settings), config) for row in runnable}
    for run in runs.values():
        prepare(run)  # every row's settings are checked before any row trains
    results = []
    for index, row in enumerate(rows, 1):
        log.info("ablation row %d of %d: %s (%s)", index, len(rows), row.label, row.name)
        if row.method is None:
            results.append(RowResult(row, not_run="not run: not reproducible here"))
        elif row.anomaly_source == "natural" and not config.natural_images:
            results.append(RowResult(row, not_run="not run: needs --natural-images"))
        else:
            results.append(run_row(row, runs[row.name], config))
        if results[-1].not_run:
            log.warning("row %s: %s", row.name, results[-1].not_run)
    out = Path(config.out)
    table = io.StringIO()
    csv.writer(table).writerows([CSV_HEADER, *(csv_row(result) for result in results)])
    write_text(out / "ablation.csv", table.getvalue())
    write_text(out / "ablation.md", header(config) + "\n" + markdown([list(MD_HEADER), *map(md_row, results)]))
    return out / "ablation.md"


def percent(value: float | None, scale: float = 100.0, missing: str = "n/a") -> str:
    """A figure in percent with one decimal (`scale` 1 for figures already in percent)."""
    return missing if value is None else f"{scale * value:.1f}"


def csv_row(result: RowResult) -> list[str]:
    """The row's line of ablation.csv: our figures and the paper's in percent, empty where absent."""
    row, ours = result.row, result.metrics or {}
    figures = [percent(ours.get(name), missing="") for name in FIGURES]
    paper = [percent(getattr(row, name), 1.0, "") for name in FIGURES]
    return [row.name, row.label, row.method or "", row.columns, "" if result.steps is None else str(result.steps),
            *figures, *paper, result.not_run, row.note]


def md_row(result: RowResult) -> list[str]:
    """The row's line of ablation.md in the paper's layout: Det. (image AUROC), Loc. (pixel AUROC / AP)."""
    row, ours = result.row, result.metrics
    det = result.not_run if ours is None else percent(ours["image_auroc"])
    loc = "" if ours is None else f"{percent(ours['pixel_auroc'])} / {percent(ours['pixel_ap'])}"
    paper_loc = f"{percent(row.pixel_auroc, 1.0)} / {percent(row.pixel_ap, 1.0)}"
    return [f"{row.label} ({row.name})", row.method or "", row.columns,
            "" if result.steps is None else str(result.steps), det, loc, percent(row.image_auroc, 1.0), paper_loc,
            row.note]


def header(config: AblationConfig) -> str:
    """The .md's title and the protocol and budget the rows were run with."""
    model, run = methods.get(config.method), config.train
    budget = (f"{run.max_steps} steps" if run.max_steps else
              f"{run.epochs} epochs" if run.epochs else f"the paper's {model.paper_length}")
    settings = ", ".join(f"{key}={value}" for key, value in config.settings.items()) or "none"
    return (f"# Ablation study of {model.name} ({model.paper})\n\n"
            f"- Data: {run.data}" + (f", category {run.category}" if run.category else "") + "\n"
            "- Protocol: each row trains on all training images (no validation split) and is tested in fp32 on "
            "the whole test set; Det. = image AUROC, Loc. = pixel AUROC / pixel AP, in percent.\n"
            f"- Budget: {budget}, batch size {run.batch_size}, image size {run.image_size} px, "
            f"seed {run.seed}, training precision {run.precision}, anomaly sources {run.source_colour}, "
            f"recipe {run.recipe or default_recipe(run.max_steps, None)}, image-score window "
            f"{run.score_window or 'as the recipe says'}; options set on every row: {settings}. "
            "A row already trained in its folder is reused as it is (Steps: its own).\n"
            f"- Anomaly sources: textures {run.anomaly_source or 'built in (procedural)'}, natural images "
            f"{config.natural_images or 'not given'}.\n"
            "- Paper Det. / Loc.: the paper's figures at its full budget over its whole benchmark, for reference.\n")
