"""Train any registered method on defect-free images: the whole loop, checkpoints and resumption."""

from __future__ import annotations

import bisect
import copy
import csv
import functools
import itertools
import json
import logging
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from draem import methods
from draem.data.catalog import select_dataset
from draem.data.datasets import TrainImages
from draem.data.images import FIT_MODES, RESIZE_MODES, read_image, unreadable_images
from draem.engine.calibrate import (
    LabelledBatch,
    Thresholds,
    calibrate_with_simulated_defects,
    choose_score_window,
    simulate_defective_copies,
)
from draem.engine.devices import resolve_device, resolve_precision
from draem.engine.distributed import Cluster, require_equal_shards, synchronise_batchnorm
from draem.engine.inference import Predictor
from draem.engine.recipe import (
    AVERAGE_HORIZON_SHARE,
    WeightAverage,
    check_recipe,
    default_recipe,
    fit_schedules,
    parse_duration,
    peak_rate_scale,
    steps_within,
    window_candidates,
)
from draem.engine.run import LoadedModel, ModelInfo, RunFiles, read_torch_file, save_model, versions
from draem.errors import DraemError
from draem.files import output_folder, save_torch, write_json, write_text
from draem.methods.base import AnomalyModel, Stage, TrainBatch, split_steps
from draem.scoring import IMAGE_SCORE_WINDOW, check_window
from draem.synthesis.simulator import SimulationConfig
from draem.synthesis.sources import grey_sources, list_texture_images, procedural_textures

log = logging.getLogger("draem")

SOURCE_COLOURS = ("color", "gray", "auto")
PROBE_STEPS = 3
MAX_CALIBRATION_IMAGES = 256
PATH_SETTINGS = ("data", "out", "normal", "anomaly_source")


@dataclass
class TrainConfig:
    """Every setting of a training run (the method's own in `options`); saved whole into the run directory."""

    data: str | None
    out: str
    method: str = "draem"
    options: dict[str, Any] = field(default_factory=dict)
    category: str | None = None
    normal: str | None = None
    epochs: int = 700
    max_steps: int | None = None
    time_budget: str | None = None
    recipe: str | None = None
    """'paper' or 'budget'; None: the budget recipe when --max-steps or --time-budget is given."""
    average_weights: bool = False
    batch_size: int = 8
    image_size: int = 256
    fit: str = "resize"
    resize: str = "antialias"
    anomaly_source: str | None = None
    source_colour: str = "color"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True
    workers: int = 0
    cache_mb: int = 2048
    """Memory for decoded, resized training images and textures, so that later epochs skip reading them."""
    checkpoint_every: int = 500
    validation_fraction: float = 0.1
    sync_batchnorm: bool = False
    score_window: int | None = None
    """None: the paper's 21 under the paper recipe, chosen on simulated defects under the budget recipe."""
    resume: bool = False

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Rebuild a config saved with dataclasses.asdict (runs saved before recipes existed used the paper's)."""
        return cls(**{"recipe": "paper", **values})

    def absolute(self) -> TrainConfig:
        """The same settings with every path made absolute, as they are saved."""
        return replace(self, **{name: str(Path(getattr(self, name)).absolute())
                                for name in PATH_SETTINGS if getattr(self, name) is not None})


def resumed_config(config: TrainConfig) -> TrainConfig:
    """With --resume, the run's saved settings win, except the run's place (--out), device, workers, cache,
    a moved dataset (--data / --normal) and a longer --max-steps."""
    files = RunFiles(Path(config.out))
    if not config.resume or not files.config.exists():
        return config
    try:
        saved = TrainConfig.from_dict(json.loads(files.config.read_text())["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DraemError(f"{files.config}: cannot read the run's saved settings ({exc})") from exc
    moved = {"data": config.data, "normal": config.normal} if config.data or config.normal else {}
    steps = {"max_steps": config.max_steps} if config.max_steps is not None else {}
    return replace(saved, out=config.out, device=config.device, workers=config.workers,
                   cache_mb=config.cache_mb, resume=True,
                   **moved, **steps)


def _check(config: TrainConfig, method: type[AnomalyModel]) -> None:
    positive = {"--epochs": config.epochs, "--batch-size": config.batch_size,
                "--image-size": config.image_size, "--checkpoint-every": config.checkpoint_every}
    for flag, value in positive.items():
        if value < 1:
            raise DraemError(f"{flag} {value}: must be at least 1")
    if config.score_window is not None:
        check_window(config.score_window)
    check_recipe(config.recipe or "paper")
    if config.time_budget is not None:
        parse_duration(config.time_budget)
    if config.max_steps is not None and config.max_steps < 1:
        raise DraemError(f"--max-steps {config.max_steps}: must be at least 1")
    if config.cache_mb < 0:
        raise DraemError(f"--cache-mb {config.cache_mb}: must be 0 or more")
    if config.image_size % method.size_multiple:
        raise DraemError(f"--image-size {config.image_size}: must be a multiple of {method.size_multiple} "
                         f"for method {method.name}")
    if not 0 <= config.validation_fraction < 1:
        raise DraemError(f"--validation-fraction {config.validation_fraction}: must be in [0, 1)")
    if config.source_colour not in SOURCE_COLOURS:
        raise DraemError(f"--source-colour {config.source_colour}: expected one of "
                         f"{', '.join(SOURCE_COLOURS)}")
    if config.resize not in RESIZE_MODES:
        raise DraemError(f"--resize {config.resize}: expected one of {', '.join(RESIZE_MODES)}")
    if config.fit not in FIT_MODES:
        raise DraemError(f"--fit {config.fit}: expected one of {', '.join(FIT_MODES)}")
    output_folder(config.out)


def with_source_colour(config: TrainConfig, paths: list[Path]) -> TrainConfig:
    """Resolve --source-colour 'auto': 'gray' when the first training images are grey, else 'color'."""
    if config.source_colour != "auto":
        return config
    grey = all(bool((image[0] == image[1]).all() and (image[1] == image[2]).all())
               for image in map(read_image, paths[:8]))
    log.info("training images are %s: anomaly sources are %s", "grey" if grey else "in colour",
             "made grey" if grey else "kept in colour")
    return replace(config, source_colour="gray" if grey else "color")


def require_readable(paths: list[Path]) -> None:
    """Decode every image before step 1; one line listing all that fail."""
    problems = unreadable_images(paths)
    if problems:
        raise DraemError(f"{len(problems)} of {len(paths)} images cannot be read: " + "; ".join(problems))


def split_validation(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out a seeded random `fraction` of the images (at least one train image stays)."""
    count = min(round(fraction * len(paths)), len(paths) - 1)
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = set(order[:count])
    return ([p for i, p in enumerate(paths) if i not in held_out],
            [p for i, p in enumerate(paths) if i in held_out])


def calibration_inputs(config: TrainConfig) -> tuple[list[Path], list[Path]]:
    """A run's calibration images (its held-out good images, or all training images when none are held out) and
    its anomaly sources, as training picked them from `config`."""
    paths = select_dataset(config.data, config.category, config.normal).train_images()
    held_out = split_validation(paths, config.validation_fraction, config.seed)[1]
    return held_out or paths, list_texture_images(config.anomaly_source) if config.anomaly_source else []


def calibration_samples(config: TrainConfig, images: list[Path], textures: list[Path]) -> list[LabelledBatch]:
    """The held-out normal images (up to MAX_CALIBRATION_IMAGES), each followed by simulated defects on copies
    of it, drawn from the run's seed: what calibration and the choice of score window see."""
    images = images[:MAX_CALIBRATION_IMAGES]
    generator = torch.Generator().manual_seed(config.seed)
    picks = torch.randint(0, max(len(textures), 1), (len(images),), generator=generator).tolist()
    dataset = TrainImages(images, config.image_size, config.fit, textures, config.resize)
    items = [dataset[(i, t)] for i, t in enumerate(picks)]
    batch = torch.stack([item["image"] for item in items])
    sources = (torch.stack([item["source"] for item in items]) if textures
               else procedural_textures(len(images), config.image_size, generator))
    if config.source_colour == "gray":
        sources = grey_sources(sources)
    return simulate_defective_copies(batch, sources, SimulationConfig(), config.seed)


def calibrate_after_training(model: AnomalyModel, info: ModelInfo, config: TrainConfig, images: list[Path],
                             textures: list[Path], device: torch.device) -> Thresholds:
    """Thresholds from held-out normal images and simulated defects on them; first, without a --score-window
    under the budget recipe, the window that best separates the two (written into `info`)."""
    samples = calibration_samples(config, images, textures)
    predictor = Predictor(LoadedModel(model, info, Path(config.out)), device)
    if config.score_window is None and config.recipe == "budget":
        separation = choose_score_window(predictor, samples, window_candidates(config.image_size))
        log.info("score window %d chosen on simulated defects (image AUROC by window: %s)", info.score_window,
                 ", ".join(f"{w}: {a:.4f}" for w, a in separation.items()))
    return calibrate_with_simulated_defects(predictor, samples)


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


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator that draws every simulated anomaly of one step in one process."""
    entropy = [seed, step, 1] if rank == 0 else [seed, step, 1, rank]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


class StopRequest:
    """Turns the first Ctrl-C or SIGTERM into a request honoured after the current step."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> StopRequest:
        self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self._previous:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class LossLog:
    """losses.csv (trimmed to the resumed step), TensorBoard when installed, and the progress bar."""

    def __init__(self, files: RunFiles, terms: tuple[str, ...], step: int, total_steps: int,
                 enabled: bool = True) -> None:
        self.enabled, self.terms = enabled, terms
        if not enabled:
            return
        columns = ["step", "epoch", "stage", "lr", *terms, "images_per_s"]
        rows: list[list[str]] = []
        if step and files.losses.exists():
            with files.losses.open(newline="") as stream:
                rows = [r for r in list(csv.reader(stream))[1:] if r and int(r[0]) <= step]
        write_text(files.losses, "\n".join(",".join(r) for r in [columns, *rows]) + "\n")
        self.stream = files.losses.open("a", newline="", buffering=1)
        self.writer = csv.writer(self.stream)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.board: SummaryWriter | None = SummaryWriter(str(files.root / "tensorboard"))
        except ImportError:
            self.board = None
        self.progress = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
        self.last = time.perf_counter()

    def record(self, step: int, epoch: int, stage: str, lr: float, losses: dict[str, float], images: int) -> None:
        """Log one finished step; images/s counts every process's images."""
        if not self.enabled:
            return
        now = time.perf_counter()
        rate, self.last = images / (now - self.last), now
        cells = [f"{losses[k]:.6f}" if k in losses else "" for k in self.terms]
        self.writer.writerow([step, epoch, stage, f"{lr:.6g}", *cells, f"{rate:.3f}"])
        if self.board is not None:
            for name, value in losses.items():
                self.board.add_scalar(f"loss/{name}", value, step)
        self.progress.update(1)
        shown = {k: f"{v:.4f}" for k, v in list(losses.items())[:4]}
        self.progress.set_postfix(**shown, img_s=f"{rate:.1f}")

    def __enter__(self) -> LossLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.close()
            self.stream.close()
            if self.board is not None:
                self.board.close()


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


def _batches(dataset: TrainImages, config: TrainConfig, cluster: Cluster, textures: int, epoch: int,
             skip: int) -> Iterator[dict[str, torch.Tensor]]:
    """This process's share of each global batch of an epoch, from batch `skip` on."""
    batches = epoch_batches(len(dataset), textures, config.batch_size * cluster.world, config.seed, epoch,
                            drop_partial=cluster.world > 1)[skip:]
    shards = [b[cluster.rank * config.batch_size:(cluster.rank + 1) * config.batch_size] for b in batches]
    return iter(DataLoader(dataset, batch_sampler=shards, num_workers=config.workers))


def seconds_per_step(model: AnomalyModel, dataset: TrainImages, config: TrainConfig, method: type[AnomalyModel],
                     cluster: Cluster, device: torch.device, memory_format: torch.memory_format,
                     precision: str) -> float:
    """A step's time on this machine: a few steps of every stage on a copy of the model (the first of each
    not counted), weighted by the stages' shares; the mean over processes."""
    probe = copy.deepcopy(model)
    batches = itertools.chain.from_iterable(_batches(dataset, config, cluster, len(dataset.textures), epoch, 0)
                                            for epoch in itertools.count())
    seconds = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for stage in probe.stages(PROBE_STEPS * 10):
            activate(probe, stage)
            times = []
            for step in range(PROBE_STEPS):
                start = time.perf_counter()
                inputs = training_batch(next(batches), config, method, step, cluster.rank, device, memory_format,
                                        precision)
                probe.training_step(inputs, stage, functools.partial(step_optimiser, cluster=cluster))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
            seconds += stage.fraction * statistics.median(times[1:])
    return float(cluster.mean(torch.tensor([seconds], device=device)))


def step_optimiser(loss: torch.Tensor, optimizer: torch.optim.Optimizer, cluster: Cluster) -> None:
    """Backpropagate, average the gradients over the processes and step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    cluster.average_gradients([p for group in optimizer.param_groups for p in group["params"]])
    optimizer.step()


def activate(model: AnomalyModel, stage: Stage) -> None:
    """Train mode and gradients for the stage's trainable modules only; everything else frozen in eval mode."""
    model.requires_grad_(False).eval()
    for module in stage.trainable:
        module.requires_grad_(True).train()


def stage_at(ends: list[int], step: int) -> int:
    """The index of the stage that runs step `step` (0-based), given each stage's last step; the last after the end."""
    return min(bisect.bisect_right(ends, step), len(ends) - 1)


def _stage_state(stages: list[Stage]) -> dict[str, dict[str, Any]]:
    return {"optimizers": {f"{s.name}/{n}": o.state_dict() for s in stages for n, o in s.optimizers.items()},
            "schedulers": {f"{s.name}/{i}": c.state_dict() for s in stages for i, c in enumerate(s.schedulers)}}


def _load_stage_state(stages: list[Stage], state: dict[str, Any]) -> None:
    for stage in stages:
        for name, optimizer in stage.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][f"{stage.name}/{name}"])
        for index, scheduler in enumerate(stage.schedulers):
            scheduler.load_state_dict(state["schedulers"][f"{stage.name}/{index}"])


def prepare(config: TrainConfig) -> tuple[TrainConfig, type[AnomalyModel]]:
    """The run's settings, resumed and validated, with the method's options and recipe complete."""
    if config.time_budget is not None and config.max_steps is not None and not config.resume:
        raise DraemError(f"--time-budget {config.time_budget} --max-steps {config.max_steps}: give one of them")
    config = resumed_config(config).absolute()
    config = replace(config, recipe=config.recipe or default_recipe(config.max_steps, config.time_budget))
    method = methods.get(config.method)
    options = method.Options.from_dict(config.options)
    options.validate()
    _check(config, method)
    return replace(config, options=asdict(options)), method


def train(config: TrainConfig, cluster: Cluster | None = None) -> Path:
    """Train a model as `config` says and return the path of the saved model.

    Under torchrun the processes train one model together unless a single-process `cluster` is given.
    """
    started = time.perf_counter()
    config, method = prepare(config)
    files = RunFiles(Path(config.out))
    if files.checkpoint.exists() and not config.resume:
        raise DraemError(f"{files.checkpoint}: run directory already holds a checkpoint; "
                         "pass --resume to continue it or choose another --out")
    state = read_torch_file(files.checkpoint) if config.resume and files.checkpoint.exists() else None
    if state is not None and files.model.exists() and (config.max_steps or 0) <= state["step"]:
        raise DraemError(f"{files.model}: the run has finished its {state['step']} steps; pass a larger "
                         "--max-steps to extend it")
    all_paths = select_dataset(config.data, config.category, config.normal).train_images()
    textures = list_texture_images(config.anomaly_source) if config.anomaly_source else []
    require_readable(all_paths + textures)
    config = with_source_colour(config, all_paths)
    paths, held_out = split_validation(all_paths, config.validation_fraction, config.seed)
    device = resolve_device(config.device)
    cluster = cluster or Cluster.from_environment(device)
    device = cluster.device(device)
    precision = resolve_precision(config.precision, device)
    if not textures and method.uses_anomaly_sources and cluster.main:
        log.warning("no --anomaly-source given: using the built-in procedural textures")
    torch.manual_seed(config.seed)

    model = method(method.Options.from_dict(config.options))
    if config.sync_batchnorm:
        synchronise_batchnorm(model)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    global_batch = config.batch_size * cluster.world
    if cluster.world > 1:
        require_equal_shards(len(paths), global_batch, cluster.world)
    steps_per_epoch = batches_per_epoch(len(paths), global_batch, drop_partial=cluster.world > 1)
    dataset = TrainImages(paths, config.image_size, config.fit, textures if method.uses_anomaly_sources else [],
                          config.resize, cache_bytes=config.cache_mb * 2**20)
    if config.time_budget is not None and config.max_steps is None:
        step_seconds = seconds_per_step(model, dataset, config, method, cluster, device, memory_format, precision)
        steps = steps_within(parse_duration(config.time_budget) - (time.perf_counter() - started), step_seconds)
        if cluster.main:
            log.info("time budget %s: %.3f s per step measured; training for %d steps", config.time_budget,
                     step_seconds, steps)
        config = replace(config, max_steps=steps)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    stages = model.stages(total_steps)
    counts = split_steps(total_steps, [s.fraction for s in stages])
    ends = list(itertools.accumulate(counts))
    if config.recipe == "budget":
        fit_schedules(stages, counts, peak_rate_scale(total_steps, config.epochs * steps_per_epoch,
                                                      method.budget_rate_scale))

    step = 0
    if state is not None:
        step = state["step"]
        if step > 0 and len(stages) > 1 and state.get("total_steps", total_steps) != total_steps:
            raise DraemError(f"{files.checkpoint}: a run of a multi-stage method cannot change its number "
                             "of steps (its stages would move)")
        model.load_state_dict(state["model"])
        _load_stage_state(stages, state)
        if cluster.main:
            log.info("resuming %s at step %d of %d", files.root, step, total_steps)
    cluster.broadcast(model)
    average = None
    if config.average_weights:
        average = WeightAverage(model, AVERAGE_HORIZON_SHARE * total_steps)
        if state is not None:
            average.load_state_dict(state["average"])
    if cluster.main:
        files.root.mkdir(parents=True, exist_ok=True)
        for stale in files.root.glob(".*.tmp"):
            stale.unlink()
        files.model.unlink(missing_ok=True)
        write_json(files.config, {"train": asdict(config), "versions": versions(), "processes": cluster.world,
                                  "train_images": len(paths), "validation_images": len(held_out),
                                  "anomaly_sources": len(textures), "steps_per_epoch": steps_per_epoch,
                                  "total_steps": total_steps,
                                  "stages": {s.name: n for s, n in zip(stages, counts, strict=True)}})

    def save_checkpoint() -> None:
        if cluster.main:
            averaged = {"average": average.state_dict()} if average is not None else {}
            save_torch(files.checkpoint, {"model": model.state_dict(), **_stage_state(stages), "step": step,
                                          "stage": stages[stage_at(ends, step)].name, "total_steps": total_steps,
                                          **averaged})

    def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if cluster.any(not bool(torch.isfinite(loss.detach()).all()), device):
            raise DraemError(f"{files.checkpoint}: training stopped at step {step + 1}: non-finite loss "
                             f"({float(loss.detach()):.4g}); the last good checkpoint is kept")
        step_optimiser(loss, optimizer, cluster)

    loss_log = LossLog(files, model.loss_names(), step, total_steps, enabled=cluster.main)
    with loss_log, StopRequest() as stop:
        stopping = False
        while step < total_steps and not stopping:
            epoch, skip = divmod(step, steps_per_epoch)
            for batch in _batches(dataset, config, cluster, len(dataset.textures), epoch, skip):
                stage = stages[stage_at(ends, step)]
                activate(model, stage)
                inputs = training_batch(batch, config, method, step, cluster.rank, device, memory_format, precision)
                lr = stage.lr
                terms = model.training_step(inputs, stage, update)
                averaged = cluster.mean(torch.stack([v.float() for v in terms.values()]))
                values = dict(zip(terms, averaged.tolist(), strict=True))
                for scheduler in stage.schedulers:
                    scheduler.step()
                step += 1
                if average is not None:
                    average.update(model)
                    if step in ends and step < total_steps:
                        average.copy_to(model)  # the next stage builds on the averaged weights

                loss_log.record(step, epoch, stage.name, lr, values, len(inputs.images) * cluster.world)
                if (step % steps_per_epoch == 0 or step % config.checkpoint_every == 0 or step == total_steps
                        or step in ends):
                    save_checkpoint()
                stopping = cluster.any(stop.requested, device)
                if stopping or step == total_steps:
                    break
        if stopping:
            save_checkpoint()
    if stopping and step < total_steps:
        cluster.close()
        raise DraemError(f"{files.checkpoint}: training interrupted at step {step} of {total_steps}; "
                         "checkpoint saved, continue with --resume", 130)
    if cluster.main:
        if average is not None:
            average.copy_to(model)
        finish(model, config, files, held_out or paths, textures, device)
    cluster.barrier()
    cluster.close()
    return files.model


def finish(model: AnomalyModel, config: TrainConfig, files: RunFiles, calibration_images: list[Path],
           textures: list[Path], device: torch.device) -> None:
    """Calibrate thresholds on held-out images and write the model file."""
    model.eval()
    info = ModelInfo.of(model, config.image_size, fit=config.fit,
                        score_window=config.score_window or IMAGE_SCORE_WINDOW, resize=config.resize)
    if config.validation_fraction == 0:
        log.warning("no validation split (--validation-fraction 0): calibrating on training images")
    thresholds = calibrate_after_training(model, info, config, calibration_images, textures, device)
    info.thresholds = thresholds.as_dict()
    log.info("calibrated on %d normal and %d simulated defective images: image threshold %.4f, "
             "pixel threshold %.4f", thresholds.normal_images, thresholds.defective_images,
             thresholds.image, thresholds.pixel)
    save_model(files.model, model, info)
    log.info("model written to %s", files.model)
