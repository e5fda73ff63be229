"""The family table: RIAD, DSR and OCR-GAN (with and without forged samples) at one budget, on MTD or the fabric.

    python benchmarks/family.py --out family --data mtd=../shared/data/mtd \\
        --textures ../shared/data/dtd-subset/images --recipe paper --seed 0 --record

Two settings, as the README's family table and the demo:
- `mtd`: 1,000 steps of batch 8 at 256 px, all training images (no held-out split), score window 5, bf16 training
  where native (else fp32); RIAD width 16 at lr 4e-4, OCR-GAN widths 16 at depth 8, DSR 1,024 codes of width 64,
  hidden width 64, U-Nets of width 16, on a general model trained 2,000 steps on the texture images.
- `fabric` (the demo's fabric, written under --out): 400 steps of batch 8 at 96 px, each method's demo preset,
  fp32 training; DSR's general model 400 steps on the texture images with the demo preset's sizes.
Tests are fp32. The general model is trained once per setting (seed 0) and shared by every DSR run. Runs are
resumable and reused once tested; --rows picks rows and variants of them (`dsr:upsampling_share=0.5`); --steps and
--general-steps change the budget; --average-weights trains every row with it. --record writes
docs/results/family-<data>-<recipe>-s<seed>.json (with -steps<N>, -general<N> and -averaged where those apply).
Under the paper recipe the score window is 5; under the budget recipe it is chosen, as that recipe does.
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
PRECISIONS = {"auto": "bf16 where the CPU has it natively, else fp32", "fp32": "fp32"}
LATENT_MTD = {"codes": 1024, "code_width": 64, "hidden_width": 64}
SETTINGS = {
    "mtd": {"size": 256, "steps": 1000, "general_steps": 2000, "precision": "auto", "validation_fraction": 0.0,
            "preset": None, "general": LATENT_MTD,
            "rows": {"riad": ("riad", {"width": 16, "lr": 4e-4}),
                     "dsr": ("dsr", {**LATENT_MTD, "unet_width": 16}),
                     "ocrgan": ("ocrgan", {"width": 16, "disc_width": 16, "depth": 8, "forged_samples": False}),
                     "ocrgan-forged": ("ocrgan", {"width": 16, "disc_width": 16, "depth": 8,
                                                  "forged_samples": True})}},
    "fabric": {"size": 96, "steps": 400, "general_steps": 400, "precision": "fp32", "validation_fraction": 0.1,
               "preset": "demo", "general": {},
               "rows": {"riad": ("riad", {}), "dsr": ("dsr", {}),
                        "ocrgan": ("ocrgan", {"forged_samples": False}),
                        "ocrgan-forged": ("ocrgan", {"forged_samples": True})}},
}


def tested(config: TrainConfig, data: str, category: str | None) -> dict:
    """The run's fp32 test metrics, training it first unless it has them."""
    files = RunFiles(Path(config.out))
    if not files.metrics.exists():
        if not files.model.exists():
            train(config)
        evaluate(EvaluationConfig(run=config.out, data=data, category=category, precision="fp32"))
    return json.loads(files.metrics.read_text())


def general_model(out: Path, setting: dict, textures: str, steps: int) -> str:
    """DSR's general model for this setting (trained on the texture images once, seed 0): its model.pt."""
    folder = out / ("general" if steps == setting["general_steps"] else f"general-{steps}")
    if not RunFiles(folder).model.exists():
        train(TrainConfig(data=None, normal=textures, out=str(folder), method="dsr-general", preset=setting["preset"],
                          options=setting["general"], image_size=setting["size"], batch_size=8,
                          max_steps=steps, recipe="paper", validation_fraction=0.0,
                          precision=setting["precision"], seed=0, resume=True))
    return str(RunFiles(folder).model.absolute())


def parse_row(spec: str) -> tuple[str, dict]:
    """'dsr:upsampling_share=0.5,strength_min=0.3' -> ('dsr', {'upsampling_share': 0.5, 'strength_min': 0.3})."""
    row, _, assignments = spec.partition(":")
    pairs = (item.partition("=") for item in assignments.split(",") if item)
    return row, {option: json.loads(value) for option, _, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", required=True, metavar="mtd=PATH | fabric",
                        help="mtd=PATH for MTD in MVTec layout; fabric writes the demo fabric under --out")
    parser.add_argument("--textures", required=True, help="images for DSR's general model (the DTD subset)")
    parser.add_argument("--recipe", default="paper", choices=("paper", "budget"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", default=["riad", "dsr", "ocrgan", "ocrgan-forged"],
                        metavar="ROW[:OPTION=VALUE,...]",
                        help="rows among riad, dsr, ocrgan, ocrgan-forged, each with optional option overrides "
                             "(JSON values), e.g. dsr:upsampling_share=0.5")
    parser.add_argument("--steps", type=int, help="steps of every row (default: the setting's)")
    parser.add_argument("--general-steps", type=int, help="steps of DSR's general model (default: the setting's)")
    parser.add_argument("--average-weights", action="store_true", help="train every row with --average-weights")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    name, _, path = args.data.partition("=")
    setting = SETTINGS[name]
    out = args.out / name
    if name == "fabric":
        data, category = str(generate_demo_dataset(out / "data", seed=0, kinds=["fabric"],
                                                   image_size=setting["size"])), "fabric"
    else:
        data, category = path, None
    steps, general_steps = args.steps or setting["steps"], args.general_steps or setting["general_steps"]
    steps_tag = f"-steps{steps}" if steps != setting["steps"] else ""
    general_tag = f"-general{general_steps}" if general_steps != setting["general_steps"] else ""
    averaged_tag = "-averaged" if args.average_weights else ""
    rows = []
    for spec in args.rows:
        row, overrides = parse_row(spec)
        if row not in setting["rows"]:
            raise SystemExit(f"--rows {spec}: expected one of {', '.join(setting['rows'])}")
        method, options = setting["rows"][row]
        options = {**options, **overrides}
        if method == "dsr":
            options["general_model"] = general_model(out, setting, args.textures, general_steps)
        suffix = ("".join(f"-{k}{v}" for k, v in overrides.items()) + (general_tag if method == "dsr" else "")
                  + steps_tag + averaged_tag)
        folder = out / args.recipe / f"{row}{suffix}-s{args.seed}"
        config = TrainConfig(data=data, category=category, out=str(folder), method=method, preset=setting["preset"],
                             options=options, image_size=setting["size"], batch_size=8, max_steps=steps,
                             recipe=args.recipe, precision=setting["precision"], average_weights=args.average_weights,
                             validation_fraction=setting["validation_fraction"], seed=args.seed, resume=True,
                             score_window=5 if args.recipe == "paper" else None)
        metrics = tested(config, data, category)
        types = {kind: values["image_auroc"] for kind, values in sorted(metrics["defect_types"].items())}
        rows.append({"run": row + suffix, **{c: metrics["overall"][c] for c in COLUMNS},
                     "types": " / ".join(f"{value:.3f}" for value in types.values()),
                     "window": metrics["score_window"]})
        print(json.dumps(rows[-1]), flush=True)
    if args.record:
        kinds = " / ".join(sorted(metrics["defect_types"]))
        notes = (f"{name}: {steps} steps of batch 8 at {setting['size']} px, recipe {args.recipe}, seed "
                 f"{args.seed}, training in {PRECISIONS[setting['precision']]}, fp32 tests; sizes "
                 f"as in benchmarks/family.py; DSR's general model {general_steps} steps on {args.textures}. "
                 f"Fractions. Image AUROC per defect type: {kinds}.")
        columns = [("run", "run"), *((c, c.replace("_", " ")) for c in COLUMNS), ("types", "image AUROC by type"),
                   ("window", "score window")]
        print(write_study(f"family-{name}-{args.recipe}-s{args.seed}{steps_tag}{general_tag}{averaged_tag}",
                          f"The family on {name}", columns, rows, notes))


if __name__ == "__main__":
    main()
