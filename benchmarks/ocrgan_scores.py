"""Image AUROC of a trained OCR-GAN run under other image scores than the authors' mix, on its test set.

    python benchmarks/ocrgan_scores.py --run family/fabric/paper/ocrgan-forged-s0 --data family/fabric/data/fabric

Prints the AUROC of: the authors' score (0.9 x mean squared error + 0.1 x discriminator feature distance), each
part alone, and the maximum of the squared-error map raw and after 5 and 21 px mean filters. Inference only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from draem.data.images import fit_to_square, list_images, read_image
from draem.data.layout import GOOD
from draem.engine.run import load_model
from draem.methods.ocrgan.model import ocrgan_score, squared_errors
from draem.metrics import auroc
from draem.scoring import mean_filter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True, type=Path, help="a category folder with test/<type>/ images")
    args = parser.parse_args()
    loaded = load_model(args.run)
    model = loaded.model.eval()
    folders = sorted(path for path in (args.data / "test").iterdir() if path.is_dir())
    paths = [(path, int(folder.name != GOOD)) for folder in folders for path in list_images(folder)]
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in
                                             ("authors", "error", "features", "max raw", "max 5 px", "max 21 px")}
    with torch.no_grad():
        for start in range(0, len(paths), 16):
            images = torch.stack([fit_to_square(read_image(path), loaded.info.image_size, "resize")[0]
                                  for path, _ in paths[start:start + 16]])
            reconstruction = model.reconstruct(images)
            errors = squared_errors(reconstruction, images)
            real, fake = model.discriminate(images)[1], model.discriminate(reconstruction)[1]
            everywhere = torch.ones_like(errors, dtype=torch.bool)
            parts = {"authors": ocrgan_score(errors, everywhere, real, fake, model.options.score_weight),
                     "error": errors.mean(dim=(1, 2)), "features": (real - fake).square().mean(dim=1),
                     "max raw": errors.amax(dim=(1, 2)), "max 5 px": mean_filter(errors, 5).amax(dim=(1, 2)),
                     "max 21 px": mean_filter(errors, 21).amax(dim=(1, 2))}
            for name, values in parts.items():
                scores[name].append(values)
    labels = torch.tensor([label for _, label in paths])
    for name, values in scores.items():
        print(f"{name:10s} image AUROC {auroc(torch.cat(values), labels):.3f}")


if __name__ == "__main__":
    main()
