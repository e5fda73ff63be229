"""Whether trained DSR runs find their own training anomalies, and what their two decoders make of the real defects.

    python benchmarks/dsr_synthetic.py --run family/mtd/paper/dsr-s0 ../shared/data/mtd \\
        --run family/fabric/paper/dsr-s0 family/fabric/data/fabric --record

Per run, on its dataset's test images (not trained on):
- on the defect-free ones, --draws draws per image of stage 2's latent anomalies, scored by the detection module
  (pixel AUROC of its anomaly channel against the replaced positions; image AUROC of its image score, anomalous
  against clean), and of stage 3's colour smudges, scored as at test time (the upsampling module's map);
- the contrast of the two decoders' disagreement |object image - general image|, which the detection module reads:
  its mean inside the anomalies over its mean outside them, for the latent anomalies and for the real defects
  (masks of the defective images), and the contrast of |general image - input| on the real defects (above 1: the
  general model does not reproduce the defect);
- on the defective images alone, the pixel AUROC of the detection module's anomaly channel and that of the raw
  disagreement (what the module would find if it read the disagreement alone);
beside the run's test metrics on the real defects (metrics.json). High synthetic and low real figures: what it
trains on is not the product's defects; low synthetic figures: the stage has not learnt its own task in its steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from results import write_study
from torch.utils.data import DataLoader

from draem.data.catalog import open_dataset
from draem.data.datasets import LabelledImages
from draem.data.layout import GOOD
from draem.engine.run import RunFiles, load_model
from draem.methods.base import TrainBatch
from draem.methods.dsr.anomalies import colour_smudges
from draem.methods.dsr.model import DsrModel
from draem.metrics import auroc
from draem.scoring import image_score

BATCH = 8
FIGURES = ("latent_pixel_auroc", "latent_image_auroc", "smudge_pixel_auroc", "smudge_image_auroc",
           "latent_disagreement_contrast", "real_disagreement_contrast", "real_general_error_contrast",
           "defective_detection_pixel_auroc", "defective_disagreement_pixel_auroc", "real_pixel_auroc",
           "real_image_auroc")


def contrast(change: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float, float]:
    """(sum inside, pixels inside, sum outside, pixels outside) of a change map (B, H, W) under a mask (B, H, W)."""
    inside = mask > 0.5
    return float(change[inside].sum()), float(inside.sum()), float(change[~inside].sum()), float((~inside).sum())


@torch.no_grad()
def on_good(model: DsrModel, images: torch.Tensor, window: int, generator: torch.Generator) -> dict[str, tuple]:
    """Per kind (latent, smudge): (pixel maps, pixel targets, image scores, image labels) of defect-free images,
    and the latent anomalies' disagreement sums (`contrast`)."""
    ordered = model.in_general_order(images)
    sample = model.simulate_latent(TrainBatch(ordered, None, generator, 0), ordered)
    restored = model.networks.restore(sample.anomalous_lo, sample.anomalous_hi)
    logits = model.networks.anomaly_detection(restored.object_image, sample.general_image)
    latent = torch.softmax(logits.float(), dim=1)[:, 1]
    disagreement = (restored.object_image - sample.general_image).abs().mean(dim=1)
    smudged = colour_smudges(images, generator)
    maps, scores = model.predict(smudged.augmented, window=window)
    return {"latent": (latent, sample.target[:, 0], image_score(latent, None, window),
                       sample.target.flatten(1).amax(dim=1)),
            "smudge": (maps, smudged.mask[:, 0], scores, smudged.mask.flatten(1).amax(dim=1)),
            "latent_disagreement": contrast(disagreement, sample.target[:, 0])}


@torch.no_grad()
def on_defective(model: DsrModel, images: torch.Tensor, masks: torch.Tensor) -> dict[str, tuple]:
    """The real defects' sums (`contrast`) of the decoders' disagreement and of the general model's error, and
    the (detection module's anomaly channel, disagreement) maps."""
    ordered = model.in_general_order(images)
    object_image, general, logits = model.detect(ordered)
    disagreement = (object_image - general).abs().mean(dim=1)
    detection = torch.softmax(logits.float(), dim=1)[:, 1]
    return {"real_disagreement": contrast(disagreement, masks),
            "real_general_error": contrast((general - ordered).abs().mean(dim=1), masks),
            "maps": (detection, disagreement)}


def measure(run: Path, data: Path, draws: int, seed: int) -> dict[str, float]:
    """The module docstring's figures for one run on its dataset's test images."""
    loaded = load_model(run)
    model = loaded.model.eval()
    if not isinstance(model, DsrModel):
        raise SystemExit(f"{run}: a {loaded.info.method} run, not DSR")
    info, generator = loaded.info, torch.Generator().manual_seed(seed)
    samples = open_dataset(data).test_samples()
    good = [s for s in samples if s.defect_type == GOOD] * draws
    defective = [s for s in samples if s.defect_type != GOOD and s.mask_path is not None]
    scored: dict[str, list[list[torch.Tensor]]] = {"latent": [[], [], [], []], "smudge": [[], [], [], []]}
    sums: dict[str, torch.Tensor] = {}
    for batch in DataLoader(LabelledImages(good, info.image_size, info.fit, info.resize), batch_size=BATCH):
        for kind, parts in on_good(model, batch["image"], info.score_window, generator).items():
            if kind in scored:
                for store, part in zip(scored[kind], parts, strict=True):
                    store.append(part.flatten())
            else:
                sums[kind] = sums.get(kind, torch.zeros(4)) + torch.tensor(parts)
    maps: list[list[torch.Tensor]] = [[], [], []]
    for batch in DataLoader(LabelledImages(defective, info.image_size, info.fit, info.resize), batch_size=BATCH):
        for kind, parts in on_defective(model, batch["image"], batch["mask"]).items():
            if kind == "maps":
                for store, part in zip(maps, (*parts, batch["mask"]), strict=True):
                    store.append(part.flatten())
            else:
                sums[kind] = sums.get(kind, torch.zeros(4)) + torch.tensor(parts)
    masks = torch.cat(maps[2]).numpy() > 0.5
    figures = {"defective_detection_pixel_auroc": auroc(torch.cat(maps[0]).numpy(), masks),
               "defective_disagreement_pixel_auroc": auroc(torch.cat(maps[1]).numpy(), masks)}
    for kind, (maps, targets, scores, labels) in scored.items():
        figures[f"{kind}_pixel_auroc"] = auroc(torch.cat(maps).numpy(), torch.cat(targets).numpy() > 0.5)
        figures[f"{kind}_image_auroc"] = auroc(torch.cat(scores).numpy(), torch.cat(labels).numpy() > 0.5)
    for kind, (inside, inside_count, outside, outside_count) in sums.items():
        figures[f"{kind}_contrast"] = float((inside / inside_count) / (outside / outside_count))
    real = json.loads(RunFiles(run).metrics.read_text())["overall"]
    return {"good_images": len(good) // draws, "defective_images": len(defective), **figures,
            "real_pixel_auroc": real["pixel_auroc"], "real_image_auroc": real["image_auroc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=2, action="append", required=True, type=Path, metavar=("RUN", "DATA"),
                        help="a tested DSR run and the category folder it was tested on")
    parser.add_argument("--draws", type=int, default=2, help="draws of each kind per defect-free image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    rows = []
    for run, data in args.run:
        rows.append({"run": str(run), **measure(run, data, args.draws, args.seed)})
        print(json.dumps(rows[-1]), flush=True)
    if args.record:
        notes = (f"{args.draws} draws per defect-free test image (seed {args.seed}) of stage 2's latent anomalies and "
                 "stage 3's colour smudges; contrasts: mean change inside the anomalies (or defect masks) over mean "
                 "change outside; the real AUROC columns are the run's test metrics. Fractions.")
        columns = [("run", "run"), ("good_images", "good images"), ("defective_images", "defective images"),
                   *((key, key.replace("_", " ")) for key in FIGURES)]
        print(write_study("dsr-synthetic", "DSR on its own training anomalies and on the real defects", columns,
                          rows, notes))


if __name__ == "__main__":
    main()
