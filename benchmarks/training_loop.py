"""Training throughput of `draem train` against the authors' DRAEM loop, reproduced here, on one data set.

    python benchmarks/training_loop.py --data ../shared/data/mtd --anomaly-source ../shared/data/dtd-subset/images
    python benchmarks/training_loop.py ... --reference-steps 1500 --seed 0 --out ref-s0   # a reference model
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/training_loop.py ... --precisions fp32
    python benchmarks/training_loop.py --compiled-step   # networks, loss and Adam: eager against torch.compile

The reference is the authors' train_DRAEM.py as it runs on a CPU: a Dataset whose __getitem__ simulates one
anomaly in numpy (OpenCV-style resizes, 3 of the 10 imgaug augmenters done with numpy and PIL, numpy Perlin
noise, rotations), a DataLoader with their 16 worker processes, and the two sub-networks in fp32 eager NCHW
with one Adam over both and the loss l2 + ssim + focal (our networks and losses, which the fixtures check
against theirs). Ours is `draem.engine.train.train` with the paper recipe and the same sizes, timed from
its losses.csv. Both skip their first epoch and 40 steps more (workers starting and filling their queue of 32
batches, allocator warming; `draem train` reading each image once before its cache serves it), so that both are
timed in their steady state. Prints images/s and the
ratio against the reference measured in the same run. With --reference-steps N --out DIR, trains the
reference for N steps and saves it as a run that `draem test` evaluates. The third line limits oneDNN and
PyTorch's own kernels to AVX2, as on a CPU without AVX-512. The last rows are the ceiling that these networks
set: the time of their convolutions alone (forward and backward, profiled), which no loop can go below.
With --compiled-step it only times one step of the networks, loss and Adam over fixed tensors, eager against
`torch.compile` (inductor), channels-last, in each precision.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from speed import convolution_seconds
from torch.utils.data import DataLoader, Dataset

from draem.data.catalog import select_dataset
from draem.engine.config import TrainConfig
from draem.engine.devices import autocast, cpu_has_native_bf16
from draem.engine.run import ModelInfo, save_model
from draem.engine.train import train
from draem.errors import DraemError
from draem.methods.draem import DraemModel, DraemOptions
from draem.methods.draem.model import draem_loss
from draem.synthesis.sources import list_texture_images

AUTHORS_WORKERS = 16
CPU = torch.device("cpu")


def perlin_noise(height: int, width: int, cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient noise (H, W) over cells[0] x cells[1] lattice cells with random unit gradients, as a numpy loop
    over one sample would compute it."""
    angles = 2 * np.pi * rng.random((cells[0] + 1, cells[1] + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.arange(height) * cells[0] / height
    x = np.arange(width) * cells[1] / width
    row, col = y.astype(int), x.astype(int)
    fy, fx = (y - row)[:, None], (x - col)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[row[:, None] + dy, col[None, :] + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (6 * t - 15) + 10)

    top = corner(0, 0) + fade(fx) * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + fade(fx) * (corner(1, 1) - corner(1, 0))
    return math.sqrt(2) * (top + fade(fy) * (bottom - top))


def _shift_channels(image: Image.Image, mode: str, shifts: list[tuple[int, float, float]]) -> Image.Image:
    """Convert to `mode`, set channel c to clip(value * mul + add) for each (c, mul, add), convert back to RGB."""
    channels = np.asarray(image.convert(mode)).astype(np.float32)
    for channel, mul, add in shifts:
        channels[..., channel] = channels[..., channel] * mul + add
    return Image.fromarray(np.clip(channels, 0, 255).astype(np.uint8), mode).convert("RGB")


def _gamma(image: Image.Image, rng: random.Random) -> Image.Image:
    values = np.asarray(image).astype(np.float32) / 255
    gammas = np.array([rng.uniform(0.5, 2.0) for _ in range(3)], dtype=np.float32)
    return Image.fromarray((255 * values**gammas).astype(np.uint8))


AUGMENTERS = [  # the authors' ten, in their order, each on one uint8 RGB image
    _gamma,
    lambda im, r: _shift_channels(im, "YCbCr", [(0, r.uniform(0.8, 1.2), r.uniform(-30, 30))]),
    lambda im, r: ImageEnhance.Sharpness(im).enhance(r.uniform(0.0, 2.0)),
    lambda im, r: _shift_channels(im, "HSV", [(0, 1.0, r.uniform(-50, 50)), (1, 1.0, r.uniform(-50, 50))]),
    lambda im, r: ImageOps.solarize(im, r.randint(32, 128)) if r.random() < 0.5 else im,
    lambda im, r: ImageOps.posterize(im, r.randint(1, 8)),
    lambda im, r: ImageOps.invert(im),
    lambda im, r: ImageOps.autocontrast(im, cutoff=r.uniform(0, 20)),
    lambda im, r: ImageOps.equalize(im),
    lambda im, r: im.rotate(r.uniform(-45, 45), Image.BILINEAR),
]


class AuthorsTrainingSet(Dataset):
    """One training sample per call, simulated in numpy the way the authors' MVTecDRAEMTrainDataset does."""

    def __init__(self, images: list[Path], sources: list[Path], size: int, seed: int) -> None:
        self.images, self.sources, self.size, self.seed = images, sources, size, seed

    def __len__(self) -> int:
        return len(self.images)

    def _read(self, path: Path) -> Image.Image:
        return Image.open(path).convert("RGB").resize((self.size, self.size), Image.BILINEAR)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        nprng = np.random.default_rng([self.seed, torch.initial_seed() % 2**32, index])  # per worker and epoch
        rng = random.Random(int(nprng.integers(2**63)))
        image = self._read(self.images[index])
        if rng.random() > 0.7:
            image = image.rotate(rng.uniform(-90, 90), Image.BILINEAR)
        normal = np.asarray(image).astype(np.float32) / 255
        source = self._read(self.sources[rng.randrange(len(self.sources))])
        for choice in rng.sample(range(len(AUGMENTERS)), 3):
            source = AUGMENTERS[choice](source, rng)
        cells = (2 ** rng.randrange(6), 2 ** rng.randrange(6))
        noise = Image.fromarray(perlin_noise(self.size, self.size, cells, nprng).astype(np.float32), "F")
        noise = np.asarray(noise.rotate(rng.uniform(-90, 90), Image.BILINEAR))
        mask = (noise > 0.5).astype(np.float32)[..., None]
        beta = rng.random() * 0.8
        pasted = np.asarray(source).astype(np.float32) * mask / 255
        augmented = normal * (1 - mask) + (1 - beta) * pasted + beta * normal * mask
        if rng.random() > 0.5:
            augmented, mask = normal, np.zeros_like(mask)
        return {"image": normal.transpose(2, 0, 1), "augmented": augmented.astype(np.float32).transpose(2, 0, 1),
                "mask": mask.transpose(2, 0, 1)}


def train_reference(images: list[Path], sources: list[Path], size: int, steps: int, skip: int, seed: int,
                    workers: int) -> tuple[DraemModel, float]:
    """The authors' loop for `steps` steps of batch 8; the model and its images/s after the first `skip` steps."""
    torch.manual_seed(seed)
    model = DraemModel(DraemOptions(**DraemModel.presets["narrow"])).train()
    optimizer = torch.optim.Adam([{"params": model.reconstructive.parameters(), "lr": 1e-4},
                                  {"params": model.discriminative.parameters(), "lr": 1e-4}])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(steps * 0.8), int(steps * 0.9)], gamma=0.2)
    loader = DataLoader(AuthorsTrainingSet(images, sources, size, seed), batch_size=8, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    step, started = 0, time.perf_counter()
    while step < steps:
        for batch in loader:
            reconstruction, logits = model(batch["augmented"])
            loss = draem_loss(reconstruction, batch["image"], logits, batch["mask"], "l2+ssim")["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step == skip:
                started = time.perf_counter()
            if step % 100 == 0:
                print(f"reference step {step} of {steps}, loss {loss.item():.4f}", flush=True)
            if step == steps:
                break
    return model.eval(), 8 * (steps - skip) / (time.perf_counter() - started)


def ours(data: str, sources: str, size: int, steps: int, skip: int, precision: str, workers: int,
         out: Path) -> float:
    """images/s of `draem train` (paper recipe, same sizes) over its steps after the first `skip`."""
    train(TrainConfig(data=data, out=str(out), method="draem", preset="narrow",
                      max_steps=steps, image_size=size, batch_size=8, anomaly_source=sources, recipe="paper",
                      precision=precision, workers=workers, device="cpu"))
    with (out / "losses.csv").open() as stream:
        rates = [float(row["images_per_s"]) for row in csv.DictReader(stream)][skip:]
    return len(rates) / sum(1 / rate for rate in rates)


def fixed_batch(size: int) -> tuple[DraemModel, torch.Tensor]:
    """DRAEM 32/16 in training mode and a batch of 8 random images, both channels-last, seeded."""
    torch.manual_seed(0)
    model = DraemModel(DraemOptions(**DraemModel.presets["narrow"])).train().to(memory_format=torch.channels_last)
    return model, torch.rand(8, 3, size, size).contiguous(memory_format=torch.channels_last)


def training_convolutions(size: int, precision: str) -> float:
    """Seconds a step that DRAEM 32/16's convolutions alone take, forward and backward, channels-last, batch 8:
    no loop around these networks can step faster."""
    model, images = fixed_batch(size)

    def step() -> None:
        with autocast(CPU, precision):
            reconstruction, logits = model(images)
        (reconstruction.float().square().mean() + logits.float().square().mean()).backward()

    return convolution_seconds(step, 5)


def fixed_step_seconds(size: int, precision: str, compiled: bool, steps: int = 30) -> tuple[float, float]:
    """(median seconds a step, seconds of the first three steps) of DRAEM 32/16's networks, loss and fused Adam
    over fixed tensors, channels-last, batch 8; the first three include compilation when `compiled`."""
    model, images = fixed_batch(size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    target = torch.rand_like(images)
    mask = (torch.rand(8, 1, size, size) > 0.9).float()

    def loss() -> torch.Tensor:
        with autocast(CPU, precision):
            reconstruction, logits = model(images)
        return draem_loss(reconstruction, target, logits, mask)["total"]

    forward = torch.compile(loss) if compiled else loss
    seconds = []
    for _ in range(3 + steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        forward().backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return sorted(seconds[3:])[steps // 2], sum(seconds[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="an MVTec-layout category (required unless --compiled-step)")
    parser.add_argument("--anomaly-source", help="anomaly-source images (required unless --compiled-step)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="timed steps, after --skip")
    parser.add_argument("--skip", type=int,
                        help="untimed first steps (default: an epoch and 40 steps, more than the workers prefetch)")
    parser.add_argument("--reference-workers", type=int, default=AUTHORS_WORKERS)
    parser.add_argument("--reference-steps", type=int, help="train the reference this long and save it in --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"),
                        default=["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"],
                        help="of draem train (default: bf16 too where the CPU computes it natively)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compiled-step", action="store_true",
                        help="only time a step over fixed tensors, eager against torch.compile")
    args = parser.parse_args()
    if args.compiled_step:
        for precision in args.precisions:
            eager, _ = fixed_step_seconds(args.image_size, precision, compiled=False)
            compiled, first = fixed_step_seconds(args.image_size, precision, compiled=True)
            print(f"{precision} step over fixed tensors: eager {1000 * eager:.0f} ms, compiled "
                  f"{1000 * compiled:.0f} ms ({eager / compiled:.2f}x; its first three steps {first:.0f} s)",
                  flush=True)
        return
    if args.data is None or args.anomaly_source is None:
        parser.error("--data and --anomaly-source are required (unless --compiled-step)")
    if args.reference_steps and args.out is None:
        parser.error("--reference-steps needs --out, the folder to save the reference model in")
    try:
        images = select_dataset(args.data, None).train_images()
        sources = list_texture_images(args.anomaly_source)
    except DraemError as exc:
        parser.error(str(exc))
    if len(images) < 8:
        parser.error(f"{args.data}: {len(images)} training images, fewer than one batch of 8")
    if args.reference_steps:
        model, _ = train_reference(images, sources, args.image_size, args.reference_steps, 1, args.seed,
                                   args.reference_workers)
        save_model(args.out / "model.pt", model, ModelInfo.of(model, args.image_size))
        print(f"reference model after {args.reference_steps} steps: {args.out / 'model.pt'}")
        return
    limits = [f"{name}={os.environ[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
              if name in os.environ]
    args.skip = len(images) // 8 + 40 if args.skip is None else args.skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, native bf16: "
          f"{cpu_has_native_bf16()} {' '.join(limits)}; DRAEM 32/16, {args.image_size} px, batch 8, "
          f"{args.steps} timed steps after {args.skip}")
    total = args.skip + args.steps
    _, reference = train_reference(images, sources, args.image_size, total, args.skip, args.seed,
                                   args.reference_workers)
    print(f"{'authors loop, fp32 eager NCHW, ' + str(args.reference_workers) + ' workers':<52}"
          f"{reference:>7.2f} images/s   1.00x", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for precision in args.precisions:
            for workers in (0, 1):
                rate = ours(args.data, args.anomaly_source, args.image_size, total, args.skip, precision, workers,
                            Path(folder) / f"{precision}-{workers}")
                print(f"{f'draem train, {precision} channels-last, {workers} workers':<52}{rate:>7.2f} images/s"
                      f"{rate / reference:>7.2f}x", flush=True)
    for precision in args.precisions:
        seconds = training_convolutions(args.image_size, precision)
        print(f"{f'ceiling: the {precision} convolutions alone, {1000 * seconds:.0f} ms a step':<52}"
              f"{8 / seconds:>7.2f} images/s{8 / seconds / reference:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
