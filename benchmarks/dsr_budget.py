"""DSR on a budget: pixel and image metrics against the upsampling module's share of the steps, next to RIAD.

    python benchmarks/dsr_budget.py --out dsr-budget --textures ../shared/data/dtd-subset/images --record

Writes the demo fabric (96 px) under --out, trains DSR's general model once on the texture images (the DTD
subset, as the family table does), then DSR runs of --steps on the fabric with the upsampling module given each
of --shares of the steps after the general model (the paper: 1/6), and RIAD at the same budget, each with the
method's demo preset, score window 5, fp32 tests. Resumable: a run with metrics is reused. Prints the table;
--record writes docs/results/dsr-stage3-share.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results import write_study

from draem.data.demo import generate_demo_dataset
from draem.engine.config import TrainConfig
from draem.engine.evaluate import EvaluationConfig, evaluate
from draem.engine.run import RunFiles
from draem.engine.train import train

COLUMNS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")
SIZE = 96


def trained_and_tested(config: TrainConfig, data: Path) -> dict:
    """The run's fp32 test metrics, training it first unless it has them."""
    files = RunFiles(Path(config.out))
    if not files.metrics.exists():
        if not files.model.exists():
            train(config)
        evaluate(EvaluationConfig(run=config.out, data=str(data), category="fabric", precision="fp32"))
    return json.loads(files.metrics.read_text())["overall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--textures", required=True, help="texture images for the general model (DTD subset)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--general-steps", type=int, default=1000)
    parser.add_argument("--shares", type=float, nargs="+", default=[1 / 6, 1 / 3, 1 / 2])
    parser.add_argument("--recipe", default="paper", choices=("paper", "budget"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    data = generate_demo_dataset(args.out / "data", seed=0, kinds=["fabric"], image_size=SIZE)
    common = dict(data=str(data), category="fabric", image_size=SIZE, batch_size=8, precision="fp32",
                  recipe=args.recipe, score_window=5, seed=args.seed, preset="demo", resume=True)
    general = args.out / "general"
    if not RunFiles(general).model.exists():
        train(TrainConfig(data=None, normal=args.textures, out=str(general), method="dsr-general", preset="demo",
                          image_size=SIZE, batch_size=8, max_steps=args.general_steps, recipe="paper",
                          validation_fraction=0.0, precision="fp32", seed=args.seed, resume=True))
    rows = []
    for share in args.shares:
        run = args.out / f"dsr-share{share:.3f}-{args.recipe}-s{args.seed}"
        options = {"general_model": str((general / "model.pt").absolute()), "upsampling_share": share}
        metrics = trained_and_tested(TrainConfig(**common, out=str(run), method="dsr", options=options,
                                                 max_steps=args.steps), data)
        rows.append({"run": f"dsr, upsampling share {share:.3f}", **{c: metrics[c] for c in COLUMNS}})
        print(rows[-1], flush=True)
    riad = args.out / f"riad-{args.recipe}-s{args.seed}"
    metrics = trained_and_tested(TrainConfig(**common, out=str(riad), method="riad", max_steps=args.steps), data)
    rows.append({"run": "riad", **{c: metrics[c] for c in COLUMNS}})
    print(rows[-1])
    if args.record:
        notes = (f"Demo fabric at {SIZE} px, {args.steps} steps of batch 8, recipe {args.recipe}, seed {args.seed}, "
                 f"demo presets, score window 5, fp32; DSR's general model: {args.general_steps} steps on "
                 f"{args.textures} (demo preset sizes), reused by every DSR row. Fractions, not percent.")
        columns = [("run", "run"), *((c, c.replace("_", " ")) for c in COLUMNS)]
        print(write_study(f"dsr-stage3-share-{args.recipe}-s{args.seed}", "DSR's upsampling share", columns, rows,
                          notes))


if __name__ == "__main__":
    main()
