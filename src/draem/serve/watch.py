"""`--watch DIR`: inspect every image file that appears in a folder, each exactly once, across restarts."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from draem.data.images import list_images
from draem.serve.batcher import QueueFull
from draem.serve.uploads import UploadError, decode_upload

if TYPE_CHECKING:
    from draem.serve.service import Service

log = logging.getLogger("draem")

WATCH_DEADLINE_S = 600.0


class FolderWatcher:
    """Polls a folder; a file is inspected once its size and time stop changing between two polls."""

    def __init__(self, folder: Path, service: Service, interval_s: float = 1.0) -> None:
        self.folder, self.service, self.interval_s = folder, service, interval_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="draem-watch", daemon=True)
        self.last_seen: dict[str, tuple[int, int]] = {}

    def start(self) -> None:
        """Start polling."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop after the file in hand."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.poll()
            except Exception:  # a failing poll is logged and retried, the service goes on
                log.exception("watching %s failed", self.folder)
            self.stopping.wait(self.interval_s)

    def poll(self) -> int:
        """Inspect the files that are new and settled since the last poll; how many were handled."""
        done = self.service.store.seen_paths()
        handled = 0
        current: dict[str, tuple[int, int]] = {}
        for path in list_images(self.folder, recursive=True):
            name = path.relative_to(self.folder).as_posix()
            if name in done:
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            current[name] = (stat.st_size, stat.st_mtime_ns)
            if self.last_seen.get(name) == current[name] and not self.stopping.is_set():
                self.inspect(path, name)
                handled += 1
        self.last_seen = current
        return handled

    def inspect(self, path: Path, name: str) -> None:
        """Inspect one file and record it as seen in the same transaction as its inspection."""
        config, store = self.service.config, self.service.store
        try:
            image = decode_upload(f"watched file {name}", path.read_bytes(), path.name,
                                  int(config.max_upload_mb * 2**20), config.max_pixels)
        except (UploadError, OSError) as exc:
            log.warning("%s", exc)
            with store.transaction() as connection:
                store.mark_seen(connection, name, None, str(exc))
            return
        while True:
            try:
                futures = self.service.submit([image], time.monotonic() + WATCH_DEADLINE_S)
                break
            except QueueFull:
                if self.stopping.wait(0.05):
                    return
        judged = [future.result() for future in futures]
        self.service.persist([image], judged, f"watch:{self.folder.name}", None, watch_path=name)
