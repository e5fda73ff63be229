"""Line integration: each decision posted as JSON to a URL from a durable outbox, at least once, with retries."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from draem.serve.store import Store

log = logging.getLogger("draem")

MAX_BACKOFF_S = 30.0


def events_for(inspections: Sequence[dict[str, Any]], only_defective: bool) -> list[dict[str, Any]]:
    """The webhook events of new inspections (event id = 'inspection-<id>', the same on every retry)."""
    return [{"event_id": f"inspection-{item['id']}", "type": "inspection", "inspection": item}
            for item in inspections if not only_defective or item["decision"] == "defective"]


class WebhookSender:
    """A background thread that delivers the outbox in order, backing off while the receiver fails."""

    def __init__(self, store: Store, url: str, timeout_s: float = 5.0, first_backoff_s: float = 0.5) -> None:
        self.store, self.url, self.timeout_s, self.first_backoff_s = store, url, timeout_s, first_backoff_s
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="draem-webhook", daemon=True)

    def start(self) -> None:
        """Start delivering."""
        self.thread.start()

    def stop(self) -> None:
        """Stop delivering; what is undelivered stays in the outbox for the next start."""
        self.stopping.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=self.timeout_s + 1)

    def notify(self) -> None:
        """New events are in the outbox."""
        self.wake.set()

    def post(self, payload: str, event_id: str) -> bool:
        """POST one event; True on a 2xx answer."""
        request = urllib.request.Request(self.url, data=payload.encode(), method="POST", headers={
            "Content-Type": "application/json", "X-Draem-Event-Id": event_id})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return 200 <= response.status < 300
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.debug("webhook delivery of %s failed: %s", event_id, exc)
            return False

    def _run(self) -> None:
        backoff = self.first_backoff_s
        while not self.stopping.is_set():
            self.wake.clear()
            events = self.store.next_events(32)
            if not events:
                self.wake.wait(timeout=5.0)
                continue
            for event in events:
                if self.stopping.is_set():
                    return
                if self.post(event["payload"], event["event_id"]):
                    self.store.delivered(event["id"])
                    backoff = self.first_backoff_s
                    continue
                self.store.failed_delivery(event["id"])
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                break
