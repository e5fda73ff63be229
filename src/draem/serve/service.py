"""The inspection service without HTTP: model, batcher, store, thresholds, metrics and background threads."""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from draem.engine.calibrate import normalise
from draem.engine.predict import PredictionResult
from draem.report.overlay import map_to_png16, mask_outline, overlay, png_bytes, to_pil
from draem.serve.batcher import Batcher
from draem.serve.model import ServedModel
from draem.serve.store import Inspection, Store, new_id, public
from draem.serve.uploads import DecodedImage
from draem.serve.webhook import WebhookSender, events_for

log = logging.getLogger("draem")

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
IDEMPOTENCY_KEEP_S = 86400.0
THUMBNAIL_SIDE = 160


@dataclass
class ServeConfig:
    """Every setting of `draem serve`."""

    run: str
    store: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"
    batch_size: int = 8
    batch_wait_ms: float = 5.0
    queue_depth: int = 64
    deadline_ms: float = 10000.0
    max_upload_mb: float = 32.0
    max_pixels: int = 50_000_000
    max_images: int = 16
    token: str | None = None
    keep_days: float | None = None
    max_store_mb: float | None = None
    watch: str | None = None
    webhook: str | None = None
    webhook_only_defective: bool = False
    max_outbox: int = 10000
    prune_interval_s: float = 60.0
    watch_interval_s: float = 1.0

    @property
    def store_path(self) -> Path:
        """The store folder: --store, or RUN/serve."""
        return Path(self.store) if self.store else Path(self.run) / "serve"


@dataclass
class Judged:
    """What the service concluded about one image, before it is stored."""

    model_version: str
    score: float
    normalized_score: float | None
    decision: str | None
    threshold: float | None
    defect_area: float | None
    anomaly_map: Image.Image
    overlay: Image.Image
    thumbnail: Image.Image


class StoreFull(Exception):
    """The store's disk is full: nothing of the request was kept."""


class Metrics:
    """Counters and recent latencies since the service started."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=4096)
        self.batch_sizes: deque[int] = deque(maxlen=1024)
        self.batch_seconds: deque[float] = deque(maxlen=1024)

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter."""
        with self.lock:
            self.counts[name] += amount

    def request_done(self, seconds: float) -> None:
        """Record the latency of an answered inspection request."""
        with self.lock:
            self.latencies.append(seconds)

    def batch_done(self, size: int, seconds: float) -> None:
        """Record one forward pass."""
        with self.lock:
            self.batch_sizes.append(size)
            self.batch_seconds.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        """Counters, latency quantiles (ms) and batch sizes."""
        with self.lock:
            latencies = sorted(self.latencies)
            sizes = list(self.batch_sizes)
            seconds = list(self.batch_seconds)
            counts = dict(self.counts)

        def quantile(q: float) -> float | None:
            return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None

        return {"counts": counts, "latency_ms": {"p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99),
                                                 "window": len(latencies)},
                "batches": {"recent": len(sizes), "mean_size": round(sum(sizes) / len(sizes), 2) if sizes else None,
                            "mean_ms": round(1000 * sum(seconds) / len(seconds), 2) if seconds else None}}


class Service:
    """Everything `draem serve` runs, started and stopped with the web app."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store = Store(config.store_path, config.max_outbox)
        self.model = ServedModel.load(config.run, config.device, config.precision, config.backend)
        self.metrics = Metrics()
        self.batcher = Batcher(self.model, self.judge, config.batch_size, config.batch_wait_ms / 1000,
                               config.queue_depth, self.metrics.batch_done)
        self.thresholds: dict[str, float | None] = {}
        self.threshold_lock = threading.Lock()
        self.in_flight_keys: set[str] = set()
        self.key_lock = threading.Lock()
        self.webhook = WebhookSender(self.store, config.webhook) if config.webhook else None
        self.stopping = threading.Event()
        self.pruner = threading.Thread(target=self._prune_now_and_then, name="draem-pruner", daemon=True)
        self.watcher = None
        if config.watch:
            from draem.serve.watch import FolderWatcher

            self.watcher = FolderWatcher(Path(config.watch), self, config.watch_interval_s)
        self.started = time.time()

    def start(self) -> None:
        """Start the batcher and the background threads."""
        removed = self.store.sweep_orphans()
        if removed:
            log.info("removed %d store files left without a history row", removed)
        self.batcher.start()
        self.pruner.start()
        if self.webhook:
            self.webhook.start()
        if self.watcher:
            self.watcher.start()

    def stop(self) -> None:
        """Finish the queued images, stop the threads, close the store."""
        self.stopping.set()
        if self.watcher:
            self.watcher.stop()
        self.batcher.stop()
        if self.webhook:
            self.webhook.stop()
        if self.pruner.is_alive():
            self.pruner.join()
        self.store.close()

    def _prune_now_and_then(self) -> None:
        while not self.stopping.is_set():
            try:
                self.prune()
            except (OSError, sqlite3.Error):  # retried at the next interval; inspection goes on
                log.exception("pruning the store failed")
            self.stopping.wait(self.config.prune_interval_s)

    def prune(self) -> int:
        """Apply --keep-days and --max-store-mb, forget old idempotency keys; files pruned."""
        max_bytes = None if self.config.max_store_mb is None else int(self.config.max_store_mb * 2**20)
        pruned = self.store.prune(self.config.keep_days, max_bytes)
        if pruned:
            self.metrics.count("files_pruned", pruned)
        with self.store.transaction() as connection:
            connection.execute("DELETE FROM idempotency WHERE created < ?", (time.time() - IDEMPOTENCY_KEEP_S,))
        return pruned

    # thresholds ---------------------------------------------------------------------------------------------

    def active_threshold(self, model: ServedModel) -> float | None:
        """The image threshold applied to a model version's inspections: the latest one set for this version,
        else the run's calibrated one, else none."""
        with self.threshold_lock:
            if model.version not in self.thresholds:
                history = self.store.threshold_history(model.version)
                self.thresholds[model.version] = (history[0]["threshold"] if history
                                                  else model.thresholds.get("image"))
            return self.thresholds[model.version]

    def set_threshold(self, value: float, operator: str | None) -> None:
        """Save a new image threshold for the current model version; new inspections use it."""
        with self.threshold_lock:
            self.store.set_threshold(self.model.version, value, operator)
            self.thresholds[self.model.version] = value

    def swap_model(self, run: str) -> ServedModel:
        """Load another run and serve it from the next batch on."""
        model = ServedModel.load(run, self.config.device, self.config.precision, self.config.backend)
        self.model = model
        self.batcher.swap(model)
        log.info("now serving %s (model version %s)", run, model.version)
        return model

    # inspections -------------------------------------------------------------------------------------------

    def claim_key(self, key: str) -> bool:
        """Mark an Idempotency-Key as in flight; False when another request holds it."""
        with self.key_lock:
            if key in self.in_flight_keys:
                return False
            self.in_flight_keys.add(key)
            return True

    def release_key(self, key: str) -> None:
        """The request holding an Idempotency-Key has finished."""
        with self.key_lock:
            self.in_flight_keys.discard(key)

    def submit(self, images: Sequence[DecodedImage], deadline: float) -> list[Future[Judged]]:
        """Queue decoded images for scoring (QueueFull when there is no room for all of them)."""
        return self.batcher.submit([image.image for image in images], deadline)

    def judge(self, image: torch.Tensor, result: PredictionResult, model: ServedModel) -> Judged:
        """Decision against the threshold in force for the model's version, defect area, map and overlay
        (runs on the batcher's thread)."""
        threshold = self.active_threshold(model)
        calibrated = model.thresholds
        normalized = decision = None
        if threshold is not None:
            decision = "defective" if result.score >= threshold else "good"
            if calibrated:
                normalized = normalise(torch.tensor(result.score), threshold, calibrated["image_low"],
                                       calibrated["image_high"]).item()
        picture = overlay(image, result.anomaly_map, model.colour_scale)
        if result.mask is not None and decision == "defective":
            picture = mask_outline(picture, result.mask)
        area = None if result.mask is None else float(result.mask.float().mean())
        shown = to_pil(picture)
        thumbnail = shown.copy()
        thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        return Judged(model.version, result.score, normalized, decision, threshold, area,
                      map_to_png16(result.anomaly_map), shown, thumbnail)

    def persist(self, images: Sequence[DecodedImage], judged: Sequence[Judged], source: str | None,
                part_id: str | None, idempotency_key: str | None = None, watch_path: str | None = None
                ) -> list[dict[str, Any]]:
        """Write files, then commit rows (with the idempotent answer, webhook events, watch record) in one
        transaction; the API objects. StoreFull, with nothing kept, when the disk is full."""
        now = time.time()
        written: list[tuple[str, str]] = []
        rows: list[Inspection] = []
        try:
            for image, item in zip(images, judged, strict=True):
                height, width = image.image.shape[-2:]
                row = Inspection(new_id(now), now, source, part_id, image.file_name, item.score,
                                 item.normalized_score, item.decision, item.threshold, item.defect_area,
                                 item.model_version, width, height, image.ext, 0)
                files = {"image": image.data, "map": png_bytes(item.anomaly_map), "overlay": png_bytes(item.overlay),
                         "thumbnail": png_bytes(item.thumbnail)}
                row.file_bytes = self.store.write_files(row.id, files, row.image_ext)
                written.append((row.id, row.image_ext))
                rows.append(row)
            answers = [public({**asdict(row), "verdict": None, "note": None, "operator": None, "reviewed": None})
                       for row in rows]
            with self.store.transaction() as connection:
                self.store.insert_inspections(connection, rows)
                if idempotency_key is not None:
                    connection.execute("INSERT INTO idempotency VALUES (?, ?, ?)",
                                       (idempotency_key, json.dumps({"inspections": answers}), now))
                if self.webhook:
                    self.store.enqueue_events(connection, events_for(answers, self.config.webhook_only_defective))
                if watch_path is not None:
                    self.store.mark_seen(connection, watch_path, rows[0].id, None)
        except (OSError, sqlite3.OperationalError) as exc:
            for inspection_id, ext in written:
                self.store.remove_files(inspection_id, ext)
            if getattr(exc, "errno", None) in FULL_DISK or "full" in str(exc).lower():
                self.metrics.count("store_full")
                raise StoreFull(f"the store at {self.store.root} is full: nothing was kept") from exc
            raise
        if self.webhook:
            self.webhook.notify()
        for answer in answers:
            self.metrics.count("inspections")
            self.metrics.count(f"decision_{answer['decision'] or 'none'}")
        return answers
