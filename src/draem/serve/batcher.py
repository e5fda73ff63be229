"""Requests' images in a bounded queue, scored together by one worker thread in batches, within deadlines."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from draem.data.images import Placement, fit_to_square, valid_region
from draem.engine.predict import PredictionResult, results_for_batch
from draem.serve.model import ServedModel

log = logging.getLogger("draem")


class QueueFull(Exception):
    """The queue has no room for a request's images."""


class DeadlineExceeded(Exception):
    """The deadline passed before the model got to an image."""


@dataclass
class Job:
    """One image waiting to be scored."""

    image: torch.Tensor
    deadline: float
    future: Future[Any] = field(default_factory=Future)


@dataclass
class Fitted:
    """An image fitted to a model's input square."""

    image: torch.Tensor
    valid: torch.Tensor
    placement: Placement


Finish = Callable[[torch.Tensor, PredictionResult, ServedModel], Any]


class Batcher:
    """A bounded queue of images and the worker thread that scores them, up to batch_size per forward pass.

    `finish(image, result, model)` turns each result into what its future holds, on the worker thread, so that
    every tensor operation of the service runs on this one thread (many threads each driving the CPU's thread
    pool oversubscribe it).
    """

    def __init__(self, model: ServedModel, finish: Finish, batch_size: int, wait_s: float, depth: int,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.model, self.finish = model, finish
        self.batch_size, self.wait_s, self.depth = batch_size, wait_s, depth
        self.on_batch = on_batch
        self.queue: deque[Job] = deque()
        self.ready = threading.Condition()
        self.stopping = False
        self.worker = threading.Thread(target=self._work, name="draem-batcher", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self.worker.start()

    def stop(self) -> None:
        """Score everything still queued, then end the worker thread."""
        with self.ready:
            self.stopping = True
            self.ready.notify_all()
        if self.worker.is_alive():
            self.worker.join()

    def swap(self, model: ServedModel) -> None:
        """Use another model from the next batch on."""
        self.model = model

    def queued(self) -> int:
        """Images waiting in the queue."""
        return len(self.queue)

    def submit(self, images: Sequence[torch.Tensor], deadline: float) -> list[Future[Any]]:
        """Queue all of a request's images or none (QueueFull); futures of their results."""
        jobs = [Job(image, deadline) for image in images]
        with self.ready:
            if self.stopping:
                raise QueueFull("the service is shutting down")
            if len(self.queue) + len(jobs) > self.depth:
                raise QueueFull(f"the queue is full ({len(self.queue)} of {self.depth} images waiting)")
            self.queue.extend(jobs)
            self.ready.notify()
        return [job.future for job in jobs]

    def _take(self) -> list[Job] | None:
        """The next batch: waits for a first image, then up to wait_s for more; None when stopped and empty."""
        with self.ready:
            while not self.queue:
                if self.stopping:
                    return None
                self.ready.wait()
            until = time.monotonic() + self.wait_s
            while len(self.queue) < self.batch_size and not self.stopping:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self.ready.wait(left)
            return [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            now = time.monotonic()
            live = []
            for job in jobs:
                if not job.future.set_running_or_notify_cancel():
                    continue
                if now > job.deadline:
                    job.future.set_exception(DeadlineExceeded())
                else:
                    live.append(job)
            if live:
                self._score(live)

    def _score(self, jobs: list[Job]) -> None:
        model = self.model
        size, fit, resize = model.geometry
        started = time.perf_counter()
        try:
            fitted = [Fitted(*_fit(job.image, size, fit, resize)) for job in jobs]
            results = results_for_batch(model.predictor, torch.stack([f.image for f in fitted]),
                                        torch.stack([f.valid for f in fitted]), [f.placement for f in fitted])
            finished = [self.finish(job.image, result, model) for job, result in zip(jobs, results, strict=True)]
        except Exception as exc:  # a model failure answers these requests, the worker goes on
            log.exception("scoring a batch of %d failed", len(jobs))
            for job in jobs:
                job.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(jobs), time.perf_counter() - started)
        for job, answer in zip(jobs, finished, strict=True):
            job.future.set_result(answer)


def _fit(image: torch.Tensor, size: int, fit: str, resize: str) -> tuple[torch.Tensor, torch.Tensor, Placement]:
    fitted, where = fit_to_square(image, size, fit, resize)
    return fitted, valid_region(where, size), where
