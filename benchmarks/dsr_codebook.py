"""The health of DSR's general model trained on local images, and what its latent anomalies look like decoded.

    python benchmarks/dsr_codebook.py --out dsr-codebook --textures ../shared/data/dtd-subset/images \\
        --restarts random far --record

Trains the general model on the texture images once per dead-code restart mode (`--restart-to`; demo preset sizes,
96 px, --general-steps), then measures it on the demo fabric's training images, and trains and tests DSR on the
fabric on each (as benchmarks/family.py's fabric setting). Per codebook level (lo, hi):
- codes used on the images, and their perplexity;
- near-duplicates: codes whose nearest other code is closer than the median quantisation error (the distance of a
  feature to its code), so that telling them apart is below what quantisation already loses;
- stage 2's latent anomalies (its masks and strengths, one level replaced): the share of replacement codes never
  used on the images, the share within the quantisation error of the code they replace, and how visible the
  anomaly is through the general decoder: mean |change| of the decoded image inside the mask, outside it, and the
  share of anomalies whose mean change inside is under 1 % of the intensity range (invisible, yet labelled
  anomalous).
`--measure RUN FOLDER` only measures an existing general model on a folder of images (e.g. a product's own).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from family import COLUMNS, tested
from results import write_study

from draem.data.demo import generate_demo_dataset
from draem.data.images import fit_to_square, list_images, read_image
from draem.engine.config import TrainConfig
from draem.engine.run import RunFiles, load_model
from draem.engine.train import train
from draem.methods.dsr.anomalies import latent_anomalies, latent_anomaly_masks, pool_mask, unpool_mask
from draem.methods.dsr.networks import DiscreteLatentModel, VectorQuantizerEMA

SIZE = 96
INVISIBLE = 0.01
"""A latent anomaly whose decoded image changes by less than this inside its mask (mean |change|) is invisible."""
HEALTH = ("codes_used", "perplexity", "near_duplicates", "replacements_unused", "replacements_within_error",
          "change_inside", "change_outside", "invisible")
"""The figures of one codebook level that the tables show."""


def usage(quantizer: VectorQuantizerEMA, features: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(code counts (K,), perplexity, median quantisation error) of features (B, D, h, w)."""
    distances = quantizer.distances(features)
    nearest, indices = distances.min(dim=-1)
    counts = torch.bincount(indices.flatten(), minlength=quantizer.codebook.shape[0]).float()
    share = counts / counts.sum()
    perplexity = torch.exp(-(share * torch.log(share + 1e-10)).sum())
    return counts, float(perplexity), float(nearest.clamp(min=0).sqrt().median())


def near_duplicates(codebook: torch.Tensor, radius: float) -> int:
    """Codes whose nearest other code lies within `radius`."""
    distances = torch.cdist(codebook.float(), codebook.float())
    distances.fill_diagonal_(float("inf"))
    return int((distances.amin(dim=1) < radius).sum())


@torch.no_grad()
def level_health(vq: DiscreteLatentModel, images: torch.Tensor, level: str, seed: int) -> dict[str, float]:
    """The figures of the module docstring for one level, on images (B, 3, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    encoded = vq.encode(images)
    quantizer, features = ((vq.quantizer_lo, encoded.features_lo) if level == "lo"
                           else (vq.quantizer_hi, encoded.features_hi))
    quantized = encoded.lo.quantized if level == "lo" else encoded.hi.quantized
    counts, perplexity, error = usage(quantizer, features)
    clean = vq.decode(encoded.lo.quantized, encoded.hi.quantized)
    reconstruction_error = float((clean - images).abs().mean())
    _, mask = latent_anomaly_masks(images, generator)
    strength = 0.2 + 0.8 * torch.rand(len(images), generator=generator)
    small = pool_mask(mask, features.shape[-2:])
    anomalous = latent_anomalies(features, quantized, quantizer, small, strength, generator)
    changed = (anomalous - quantized).abs().sum(dim=1) > 0
    original = quantizer.nearest(quantized)[changed]
    replacement = quantizer.nearest(anomalous)[changed]
    gap = (quantizer.codebook[replacement] - quantizer.codebook[original]).norm(dim=1)
    decoded = (vq.decode(anomalous, encoded.hi.quantized) if level == "lo"
               else vq.decode(encoded.lo.quantized, anomalous))
    change = (decoded - clean).abs().mean(dim=1, keepdim=True)
    inside = unpool_mask(small, images.shape[-2:])
    masked = inside.flatten(1).sum(1) > 0
    inside_change = (change * inside).flatten(1).sum(1)[masked] / inside.flatten(1).sum(1)[masked]
    outside_change = (change * (1 - inside)).sum() / (1 - inside).sum()
    return {"codes_used": int((counts > 0).sum()), "perplexity": perplexity,
            "near_duplicates": near_duplicates(quantizer.codebook, error), "quantisation_error": error,
            "replacements_unused": float((counts[replacement] == 0).float().mean()),
            "replacements_within_error": float((gap < error).float().mean()),
            "change_inside": float(inside_change.mean()), "change_outside": float(outside_change),
            "invisible": float((inside_change < INVISIBLE).float().mean()),
            "reconstruction_error": reconstruction_error}


def measure(run: Path, folder: Path, size: int, count: int, seed: int, record: bool) -> None:
    """The health rows of an existing general model (a `dsr-general` run) on up to `count` images of a folder,
    spread evenly over it, at `size` px."""
    paths = list_images(folder)
    paths = paths[::max(1, len(paths) // count)][:count]
    images = torch.stack([fit_to_square(read_image(path), size, "resize")[0] for path in paths])
    vq = load_model(run).model.vq.eval()
    rows = [{"run": level, **level_health(vq, images, level, seed)} for level in ("lo", "hi")]
    for row in rows:
        print(json.dumps(row))
    if record:
        keys = (*HEALTH, "reconstruction_error")
        notes = f"General model {run}, measured on {len(paths)} images of {folder} at {size} px, seed {seed}."
        print(write_study(f"dsr-codebook-{folder.parent.parent.name}", "DSR's codebook health",
                          [("run", "codebook"), *((key, key.replace("_", " ")) for key in keys)], rows, notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where the fabric, general models and DSR runs go")
    parser.add_argument("--textures", help="images the general models train on (the DTD subset)")
    parser.add_argument("--measure", nargs=2, type=Path, metavar=("RUN", "FOLDER"),
                        help="only measure an existing dsr-general run on a folder of images (no training)")
    parser.add_argument("--size", type=int, default=256, help="image size for --measure")
    parser.add_argument("--count", type=int, default=40, help="images measured with --measure")
    parser.add_argument("--restarts", nargs="+", default=["random", "far"], choices=("random", "far"))
    parser.add_argument("--general-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=400, help="DSR's steps on the fabric")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.measure:
        return measure(*args.measure, args.size, args.count, args.seed, args.record)
    if args.out is None or args.textures is None:
        parser.error("--out and --textures are required unless --measure is given")
    data = generate_demo_dataset(args.out / "data", seed=0, kinds=["fabric"], image_size=SIZE)
    paths = list_images(data / "fabric" / "train" / "good")
    images = torch.stack([fit_to_square(read_image(path), SIZE, "resize")[0] for path in paths])
    rows = []
    for mode in args.restarts:
        general = args.out / f"general-{mode}-s{args.seed}"
        if not RunFiles(general).model.exists():
            train(TrainConfig(data=None, normal=args.textures, out=str(general), method="dsr-general", preset="demo",
                              options={"restart_to": mode}, image_size=SIZE, batch_size=8,
                              max_steps=args.general_steps, recipe="paper", validation_fraction=0.0,
                              precision="fp32", seed=args.seed, resume=True))
        vq = load_model(general).model.vq.eval()
        health = {level: level_health(vq, images, level, args.seed) for level in ("lo", "hi")}
        run = args.out / f"dsr-{mode}-s{args.seed}"
        metrics = tested(TrainConfig(data=str(data), category="fabric", out=str(run), method="dsr", preset="demo",
                                     options={"general_model": str(RunFiles(general).model.absolute())},
                                     image_size=SIZE, batch_size=8, max_steps=args.steps, recipe="paper",
                                     precision="fp32", score_window=5, seed=args.seed, resume=True),
                         str(data), "fabric")["overall"]
        for level, figures in health.items():
            rows.append({"run": f"restart {mode}, {level}", **figures,
                         **({c: metrics[c] for c in COLUMNS} if level == "lo" else {})})
            print(json.dumps(rows[-1]), flush=True)
    if args.record:
        columns = [("run", "run"), *((key, key.replace("_", " ")) for key in (*HEALTH, *COLUMNS))]
        notes = (f"General model: demo preset (512 codes of width 64), {args.general_steps} steps of batch 8 at "
                 f"{SIZE} px on {args.textures}, seed {args.seed}; health measured on the demo fabric's "
                 f"{len(paths)} training images; DSR: {args.steps} steps on the fabric, paper recipe, demo preset, "
                 f"score window 5, fp32; its metrics on the lo row. Changes in image units [0, 1].")
        print(write_study(f"dsr-codebook-s{args.seed}", "DSR's codebook health", columns, rows, notes))


if __name__ == "__main__":
    main()
