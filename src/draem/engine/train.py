"""Train any registered method on defect-free images: the loop, its checkpoints and resumption.

`train` reads top to bottom: settings, images, model and stages, the loop, then finishing and calibration.
Settings live in `config`, image order and random streams in `sampling`, the loss log in `runlog`.
"""

from __future__ import annotations

import bisect
import copy
import functools
import itertools
import logging
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from draem.data.datasets import TrainImages
from draem.engine.calibrate import calibrate_after_training
from draem.engine.config import TrainConfig, paper_steps, prepare
from draem.engine.devices import resolve_device, resolve_precision
from draem.engine.distributed import Cluster, require_equal_shards, synchronise_batchnorm
from draem.engine.recipe import (
    AVERAGE_HORIZON_SHARE,
    WeightAverage,
    fit_schedules,
    parse_duration,
    peak_rate_scale,
    steps_within,
)
from draem.engine.run import ModelInfo, RunFiles, save_model, versions
from draem.engine.runlog import LossLog, StopRequest
from draem.engine.sampling import (
    TrainingImages,
    batches_per_epoch,
    epoch_loader,
    plain_batches,
    training_batch,
    training_images,
)
from draem.errors import DraemError
from draem.files import save_torch, write_json
from draem.methods.base import AnomalyModel, Stage, split_steps
from draem.scoring import IMAGE_SCORE_WINDOW
from draem.weights import read_torch_file

log = logging.getLogger("draem")

PROBE_STEPS = 3


def train(config: TrainConfig, cluster: Cluster | None = None) -> Path:
    """Train a model as `config` says and return the path of the saved model.

    Under torchrun the processes train one model together unless a single-process `cluster` is given.
    """
    started = time.perf_counter()
    config, method = prepare(config)
    files = RunFiles(Path(config.out))
    state = resumable_state(config, files)
    config, images = training_images(config)
    device = resolve_device(config.device)
    cluster = cluster or Cluster.from_environment(device)
    device = cluster.device(device)
    precision = resolve_precision(config.precision, device)
    if not images.textures and method.uses_anomaly_sources and cluster.main:
        log.warning("no --anomaly-source given: using the built-in procedural textures")
    torch.manual_seed(config.seed)

    model = method(method.Options.from_dict(config.options))
    if config.sync_batchnorm:
        synchronise_batchnorm(model)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    if cluster.world > 1:
        require_equal_shards(len(images.train), config.batch_size * cluster.world, cluster.world)
    steps_per_epoch = batches_per_epoch(len(images.train), config.batch_size * cluster.world, cluster.world > 1)
    dataset = TrainImages(images.train, config.image_size, config.fit,
                          images.textures if method.uses_anomaly_sources else [], config.resize,
                          cache_bytes=config.cache_mb * 2**20)
    if config.time_budget is not None and config.max_steps is None:
        step_seconds = seconds_per_step(model, dataset, config, cluster, device, memory_format, precision)
        steps = steps_within(parse_duration(config.time_budget) - (time.perf_counter() - started), step_seconds)
        if cluster.main:
            log.info("time budget %s: %.3f s per step measured; training for %d steps", config.time_budget,
                     step_seconds, steps)
        config = replace(config, max_steps=steps)
    total_steps = config.max_steps or paper_steps(config, method, steps_per_epoch)
    stages = model.stages(total_steps)
    ends = list(itertools.accumulate(split_steps(total_steps, [s.fraction for s in stages])))
    if config.recipe == "budget":
        paper = paper_steps(config, method, steps_per_epoch)
        fit_schedules(stages, stage_steps(ends), peak_rate_scale(total_steps, paper, method.budget_rate_scale))
    step = restore(model, stages, state, total_steps, files, cluster) if state is not None else 0
    cluster.broadcast(model)
    average = WeightAverage(model, stages, AVERAGE_HORIZON_SHARE * total_steps) if config.average_weights else None
    if average is not None and state is not None:
        average.load_state_dict(state["average"])
    if cluster.main:
        start_run_folder(files, config, cluster, images, steps_per_epoch, total_steps, stages, ends)

    def save_checkpoint() -> None:
        if cluster.main:
            averaged = {"average": average.state_dict()} if average is not None else {}
            save_torch(files.checkpoint, {"model": model.state_dict(), **stage_state(stages), "step": step,
                                          "stage": stages[stage_at(ends, step)].name, "total_steps": total_steps,
                                          **averaged})

    def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if cluster.any(not bool(torch.isfinite(loss.detach()).all()), device):
            raise DraemError(f"{files.checkpoint}: training stopped at step {step + 1}: non-finite loss "
                             f"({float(loss.detach()):.4g}); the last good checkpoint is kept")
        step_optimiser(loss, optimizer, cluster)

    stopping = False
    with LossLog(files, model.loss_names(), step, total_steps, enabled=cluster.main) as loss_log, \
            StopRequest() as stop:
        while step < total_steps and not stopping:
            epoch, skip = divmod(step, steps_per_epoch)
            for batch in epoch_loader(dataset, config, cluster, epoch, skip):
                stage = stages[stage_at(ends, step)]
                activate(model, stage)
                inputs = training_batch(batch, config, method, step, cluster.rank, device, memory_format, precision)
                lr = stage.lr
                terms = model.training_step(inputs, stage, update)
                values = mean_terms(terms, cluster)
                for scheduler in stage.schedulers:
                    scheduler.step()
                step += 1
                if average is not None:
                    average.update(model)
                    if step in ends and step < total_steps:
                        average.copy_to(model)  # the next stage builds on the averaged weights
                loss_log.record(step, epoch, stage.name, lr, values, len(inputs.images) * cluster.world)
                if step % steps_per_epoch == 0 or step % config.checkpoint_every == 0 or step in ends:
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
        finish(model, config, files, images, device)
    cluster.barrier()
    cluster.close()
    return files.model


def resumable_state(config: TrainConfig, files: RunFiles) -> dict[str, Any] | None:
    """The checkpoint to resume from (None for a new run); one line when the folder cannot take this run."""
    if files.checkpoint.exists() and not config.resume:
        raise DraemError(f"{files.checkpoint}: run directory already holds a checkpoint; "
                         "pass --resume to continue it or choose another --out")
    state = read_torch_file(files.checkpoint) if config.resume and files.checkpoint.exists() else None
    if state is not None and files.model.exists() and (config.max_steps or 0) <= state["step"]:
        raise DraemError(f"{files.model}: the run has finished its {state['step']} steps; pass a larger "
                         "--max-steps to extend it")
    return state


def restore(model: AnomalyModel, stages: list[Stage], state: dict[str, Any], total_steps: int, files: RunFiles,
            cluster: Cluster) -> int:
    """Load a checkpoint's weights, optimisers and schedulers; the step it was taken after."""
    step = state["step"]
    if step > 0 and len(stages) > 1 and state.get("total_steps", total_steps) != total_steps:
        raise DraemError(f"{files.checkpoint}: a run of a multi-stage method cannot change its number "
                         "of steps (its stages would move)")
    model.load_state_dict(state["model"])
    for stage in stages:
        for name, optimizer in stage.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][f"{stage.name}/{name}"])
        for index, scheduler in enumerate(stage.schedulers):
            scheduler.load_state_dict(state["schedulers"][f"{stage.name}/{index}"])
    if cluster.main:
        log.info("resuming %s at step %d of %d", files.root, step, total_steps)
    return step


def stage_state(stages: list[Stage]) -> dict[str, dict[str, Any]]:
    """The stages' optimiser and scheduler states, keyed by stage, for the checkpoint."""
    return {"optimizers": {f"{s.name}/{n}": o.state_dict() for s in stages for n, o in s.optimizers.items()},
            "schedulers": {f"{s.name}/{i}": c.state_dict() for s in stages for i, c in enumerate(s.schedulers)}}


def start_run_folder(files: RunFiles, config: TrainConfig, cluster: Cluster, images: TrainingImages,
                     steps_per_epoch: int, total_steps: int, stages: list[Stage], ends: list[int]) -> None:
    """Create the run folder, clear what an interrupted write left and any stale model, and save the settings."""
    files.root.mkdir(parents=True, exist_ok=True)
    for stale in files.root.glob(".*.tmp"):
        stale.unlink()
    files.model.unlink(missing_ok=True)
    write_json(files.config, {"train": asdict(config), "versions": versions(), "processes": cluster.world,
                              "train_images": len(images.train), "validation_images": len(images.held_out),
                              "anomaly_sources": len(images.textures), "steps_per_epoch": steps_per_epoch,
                              "total_steps": total_steps,
                              "stages": {s.name: n for s, n in zip(stages, stage_steps(ends), strict=True)}})


def stage_steps(ends: list[int]) -> list[int]:
    """Each stage's number of steps, from each stage's last step."""
    return [b - a for a, b in itertools.pairwise([0, *ends])]


def stage_at(ends: list[int], step: int) -> int:
    """The index of the stage that runs step `step` (0-based), given each stage's last step; the last after the end."""
    return min(bisect.bisect_right(ends, step), len(ends) - 1)


def activate(model: AnomalyModel, stage: Stage) -> None:
    """Train mode and gradients for the stage's trainable modules only; everything else frozen in eval mode."""
    model.requires_grad_(False).eval()
    for module in stage.trainable:
        module.requires_grad_(True).train()


def step_optimiser(loss: torch.Tensor, optimizer: torch.optim.Optimizer, cluster: Cluster) -> None:
    """Backpropagate, average the gradients over the processes and step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    cluster.average_gradients([p for group in optimizer.param_groups for p in group["params"]])
    optimizer.step()


def mean_terms(terms: dict[str, torch.Tensor], cluster: Cluster) -> dict[str, float]:
    """A step's loss terms averaged over the processes (a stage that only collects may return none)."""
    if not terms:
        return {}
    averaged = cluster.mean(torch.stack([v.float() for v in terms.values()]))
    return dict(zip(terms, averaged.tolist(), strict=True))


def seconds_per_step(model: AnomalyModel, dataset: TrainImages, config: TrainConfig, cluster: Cluster,
                     device: torch.device, memory_format: torch.memory_format, precision: str) -> float:
    """A step's time on this machine: a few steps of every stage on a copy of the model (the first of each
    not counted), weighted by the stages' shares; the mean over processes."""
    probe = copy.deepcopy(model)
    method = type(model)
    batches = itertools.chain.from_iterable(epoch_loader(dataset, config, cluster, epoch, 0)
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


def finish(model: AnomalyModel, config: TrainConfig, files: RunFiles, images: TrainingImages,
           device: torch.device) -> None:
    """Let the method finish fitting, calibrate thresholds on the held-out images and write the model file."""
    model.eval()
    with torch.no_grad():
        model.finish_training(plain_batches(images.train, config, device))
    info = ModelInfo.of(model, config.image_size, fit=config.fit,
                        score_window=config.score_window or IMAGE_SCORE_WINDOW, resize=config.resize)
    if config.validation_fraction == 0:
        log.warning("no validation split (--validation-fraction 0): calibrating on training images")
    thresholds = calibrate_after_training(model, info, config, images.calibration, images.textures, device)
    info.thresholds = thresholds.as_dict()
    log.info("calibrated on %d normal and %d simulated defective images: image threshold %.4f, "
             "pixel threshold %.4f", thresholds.normal_images, thresholds.defective_images,
             thresholds.image, thresholds.pixel)
    save_model(files.model, model, info)
    log.info("model written to %s", files.model)
