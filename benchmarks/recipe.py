"""The paper recipe against the budget recipe at a short budget, and what each ingredient of the budget recipe buys.

    python benchmarks/recipe.py --out recipe-runs --data mtd=../shared/data/mtd fabric=demo/fabric \\
        --anomaly-source ../shared/data/dtd-subset/images --methods draem --seeds 0 1

Trains (or reuses, when its metrics.json exists) one run per method, dataset, seed and recipe under
--out/runs/<recipe>/<method>-<data>-s<seed> (1,500 steps of batch 8 at 128 px, bf16 where native, on CUDA
when present, DRAEM widths 32/16, grey anomaly sources for grey images) and tests each in fp32.
Budget runs train with --average-weights, which does not change their course: their checkpoint holds the
last weights, from which the plain budget recipe's model is finished (window chosen, thresholds
calibrated) under --out/ingredients, and tested with the paper's window too. Prints the tables of the
closing note; --report-only prints them from runs already there (trained elsewhere, or one data set and
seed per process) and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from draem import methods
from draem.engine.config import TrainConfig
from draem.engine.devices import resolve_device
from draem.engine.evaluate import EvaluationConfig, evaluate
from draem.engine.run import RunFiles
from draem.engine.sampling import training_images
from draem.engine.train import finish, train
from draem.scoring import IMAGE_SCORE_WINDOW
from draem.weights import read_torch_file

COLUMNS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")
PRESETS = {"draem": "narrow"}
"""The size each method trains at here (DRAEM: widths 32/16); others: their full networks."""
VARIANTS = ("budget recipe", "schedule only (paper window)", "budget recipe + averaged weights")


def run_folder(out: Path, recipe: str, method: str, data: str, seed: int) -> Path:
    return out / "runs" / recipe / f"{method}-{data}-s{seed}"


def measured(folder: Path, report_only: bool) -> bool:
    """Whether the run in `folder` has its test metrics; with --report-only, their absence is an error."""
    exists = RunFiles(folder).metrics.exists()
    if not exists and report_only:
        raise SystemExit(f"{folder}: no metrics.json (--report-only trains and tests nothing)")
    return exists


def metrics_of(folder: Path) -> dict:
    return json.loads(RunFiles(folder).metrics.read_text())


def train_and_test(folder: Path, method: str, data: str, recipe: str, seed: int, args: argparse.Namespace) -> dict:
    """The run's fp32 test metrics, training it first unless it has them."""
    files = RunFiles(folder)
    if not measured(folder, args.report_only):
        if not files.model.exists():
            train(TrainConfig(data=data, out=str(folder), method=method, preset=PRESETS.get(method),
                              max_steps=args.steps, image_size=args.image_size, batch_size=8,
                              anomaly_source=args.anomaly_source, source_colour="auto", seed=seed,
                              precision="auto", recipe=recipe,
                              average_weights=recipe == "budget", resume=True))
        evaluate(EvaluationConfig(run=str(folder), data=data, precision="fp32"))
    return metrics_of(folder)["overall"]


def finish_with_last_weights(run: Path, folder: Path, data: str, window: int | None, report_only: bool) -> dict:
    """Finish a budget run from its last (not averaged) weights as training would have without --average-weights,
    with the score window chosen (None) or given, in `folder`; its fp32 test metrics."""
    files = RunFiles(folder)
    if not measured(folder, report_only):
        config = TrainConfig.from_dict(json.loads(RunFiles(run).config.read_text())["train"])
        config = replace(config, out=str(folder), score_window=window, average_weights=False)
        model = methods.get(config.method)(methods.get(config.method).Options.from_dict(config.options))
        model.load_state_dict(read_torch_file(RunFiles(run).checkpoint)["model"])
        config, images = training_images(config)
        folder.mkdir(parents=True, exist_ok=True)
        finish(model.to(device := resolve_device("auto")), config, files, images, device)
        evaluate(EvaluationConfig(run=str(folder), data=data, precision="fp32"))
    return metrics_of(folder)["overall"]


def mean(rows: list[dict]) -> dict[str, float]:
    return {c: statistics.fmean(r[c] for r in rows) for c in COLUMNS}


def row(name: str, values: dict[str, float], reference: dict[str, float] | None = None) -> str:
    cells = [f"{100 * values[c]:.1f}" + (f" ({100 * (values[c] - reference[c]):+.1f})" if reference else "")
             for c in COLUMNS]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", required=True, nargs="+", metavar="NAME=PATH")
    parser.add_argument("--anomaly-source")
    parser.add_argument("--methods", nargs="+", default=["draem"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--report-only", action="store_true", help="print the tables of runs already there")
    args = parser.parse_args()
    datasets = dict(item.split("=", 1) for item in args.data)
    header = "| | " + " | ".join(COLUMNS) + " |\n|---|" + "---:|" * len(COLUMNS)
    for method in args.methods:
        results: dict[str, dict[str, list[dict]]] = {}
        for name, path in datasets.items():
            for seed in args.seeds:
                for recipe in ("paper", "budget"):
                    folder = run_folder(args.out, recipe, method, name, seed)
                    metrics = train_and_test(folder, method, path, recipe, seed, args)
                    results.setdefault(name, {}).setdefault(recipe, []).append(metrics)
                ingredients = args.out / "ingredients" / f"{method}-{name}-s{seed}"
                variants = [finish_with_last_weights(folder, ingredients / "budget", path, None, args.report_only),
                            finish_with_last_weights(folder, ingredients / "paper-window", path, IMAGE_SCORE_WINDOW,
                                                     args.report_only),
                            metrics]
                for variant, values in zip(VARIANTS, variants, strict=True):
                    results[name].setdefault(variant, []).append(values)
        print(f"\n## {method}: paper recipe against budget recipe ({args.steps} steps, {args.image_size} px, "
              f"seeds {' '.join(map(str, args.seeds))}; percent, budget change in brackets)\n\n{header}")
        for name, by_recipe in results.items():
            paper = mean(by_recipe["paper"])
            print(row(f"{name} paper", paper))
            print(row(f"{name} budget", mean(by_recipe[VARIANTS[0]]), paper))
        overall = {key: mean([mean(r[key]) for r in results.values()]) for key in ("paper", *VARIANTS)}
        print(row("mean paper", overall["paper"]))
        print(row("mean budget", overall[VARIANTS[0]], overall["paper"]))
        print(f"\n## {method}: ingredients of the budget recipe (mean over data and seeds; change against the "
              f"paper recipe)\n\n{header}")
        print(row("paper recipe", overall["paper"]))
        for variant in VARIANTS[1::-1] + VARIANTS[2:]:
            print(row(variant, overall[variant], overall["paper"]))
        chosen = {f"{name} s{seed}": metrics_of(args.out / "ingredients" / f"{method}-{name}-s{seed}" / "budget")
                  for name in datasets for seed in args.seeds}
        print("\nscore windows chosen: " + ", ".join(f"{k}: {v['score_window']}" for k, v in chosen.items()))


if __name__ == "__main__":
    main()
