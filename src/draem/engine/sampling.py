"""What each step trains on: the training images and their held-out share, the seeded order of every epoch,
each process's shard of a batch, and the random stream that draws a step's simulated anomalies."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from draem.data.catalog import select_dataset
from draem.data.datasets import TrainImages
from draem.data.images import list_images, read_image, unreadable_images
from draem.data.layout import require_dir
from draem.engine.config import TrainConfig
from draem.engine.distributed import Cluster
from draem.errors import DraemError
from draem.methods.base import AnomalyModel, TrainBatch
from draem.synthesis.sources import grey_sources, list_texture_images, procedural_textures

log = logging.getLogger("draem")


@dataclass
class TrainingImages:
    """A run's images: those it trains on, those held out to calibrate, and its anomaly-source textures."""

    train: list[Path]
    held_out: list[Path]
    textures: list[Path]

    @property
    def calibration(self) -> list[Path]:
        """The images thresholds are calibrated on: the held-out ones, or all when none are held out."""
        return self.held_out or self.train


def training_images(config: TrainConfig) -> tuple[TrainConfig, TrainingImages]:
    """Every image of the run, each decoded once before step 1; 'auto' anomaly-source colour resolved."""
    paths = select_dataset(config.data, config.category, config.normal).train_images()
    if config.extra_normal is not None:
        extra = list_images(require_dir(Path(config.extra_normal), "folder of extra defect-free images"), True)
        if not extra:
            raise DraemError(f"{config.extra_normal}: no images in the folder of extra defect-free images")
        known = set(paths)
        paths += [p for p in extra if p not in known]
    textures = list_texture_images(config.anomaly_source) if config.anomaly_source else []
    require_readable(paths + textures)
    config = with_source_colour(config, paths)
    train, held_out = split_validation(paths, config.validation_fraction, config.seed)
    return config, TrainingImages(train, held_out, textures)


def require_readable(paths: list[Path]) -> None:
    """Decode every image before step 1; one line listing all that fail."""
    problems = unreadable_images(paths)
    if problems:
        raise DraemError(f"{len(problems)} of {len(paths)} images cannot be read: " + "; ".join(problems))


def with_source_colour(config: TrainConfig, paths: list[Path]) -> TrainConfig:
    """Resolve --source-colour 'auto': 'gray' when the first training images are grey, else 'color'."""
    if config.source_colour != "auto":
        return config
    grey = all(bool((image[0] == image[1]).all() and (image[1] == image[2]).all())
               for image in map(read_image, paths[:8]))
    log.info("training images are %s: anomaly sources are %s", "grey" if grey else "in colour",
             "made grey" if grey else "kept in colour")
    return replace(config, source_colour="gray" if grey else "color")


def split_validation(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out a seeded random `fraction` of the images (at least one train image stays)."""
    count = min(round(fraction * len(paths)), len(paths) - 1)
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = set(order[:count])
    return ([p for i, p in enumerate(paths) if i not in held_out],
            [p for i, p in enumerate(paths) if i in held_out])


def epoch_batches(images: int, textures: int, batch_size: int, seed: int, epoch: int,
                  drop_partial: bool = False) -> list[list[tuple[int, int]]]:
    """The (image, texture) index batches of one epoch: a seeded shuffle, the last batch partial.

    A trailing batch of a single image is dropped: BatchNorm cannot train on one 1x1 feature map.
    """
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    order = torch.randperm(images, generator=generator).tolist()
    picks = torch.randint(0, max(textures, 1), (images,), generator=generator).tolist()
    pairs = list(zip(order, picks, strict=True))
    count = batches_per_epoch(images, batch_size, drop_partial)
    return [pairs[i:i + batch_size] for i in range(0, count * batch_size, batch_size)]


def batches_per_epoch(images: int, batch_size: int, drop_partial: bool = False) -> int:
    """Full batches plus a partial one of at least two images (or the only image there is)."""
    full, rest = divmod(images, batch_size)
    return full if drop_partial else max(full + (rest > 1), 1)


def epoch_loader(dataset: TrainImages, config: TrainConfig, cluster: Cluster, epoch: int,
                 skip: int) -> Iterator[dict[str, torch.Tensor]]:
    """This process's share of each global batch of an epoch, from batch `skip` on."""
    batches = epoch_batches(len(dataset), len(dataset.textures), config.batch_size * cluster.world, config.seed,
                            epoch, drop_partial=cluster.world > 1)[skip:]
    shards = [b[cluster.rank * config.batch_size:(cluster.rank + 1) * config.batch_size] for b in batches]
    return iter(DataLoader(dataset, batch_sampler=shards, num_workers=config.workers))


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator that draws every simulated anomaly of one step in one process."""
    entropy = [seed, step, 1] if rank == 0 else [seed, step, 1, rank]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


def training_batch(batch: dict[str, torch.Tensor], config: TrainConfig, method: type[AnomalyModel], step: int,
                   rank: int, device: torch.device, memory_format: torch.memory_format,
                   precision: str = "fp32") -> TrainBatch:
    """A loader batch on the device with its anomaly sources (if the method uses them) and its RNG."""
    generator = step_generator(config.seed, step, rank)
    images = batch["image"].to(device, non_blocking=True)
    sources = None
    if method.uses_anomaly_sources:
        sources = (batch["source"].to(device, non_blocking=True) if "source" in batch
                   else procedural_textures(len(images), config.image_size, generator, device))
        sources = grey_sources(sources) if config.source_colour == "gray" else sources
    return TrainBatch(images, sources, generator, step, memory_format, precision)


def plain_batches(paths: list[Path], config: TrainConfig, device: torch.device) -> Iterator[torch.Tensor]:
    """The images fitted as for training, without simulated anomalies, in batches on the device."""
    dataset = TrainImages(paths, config.image_size, config.fit, [], config.resize)
    for start in range(0, len(paths), config.batch_size):
        yield torch.stack([dataset[(i, 0)]["image"] for i in range(start, min(start + config.batch_size,
                                                                              len(paths)))]).to(device)
