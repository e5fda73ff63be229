"""`draem serve` on the line: the webhook outbox and the watch folder, in process."""

from __future__ import annotations

import json
import time
from pathlib import Path

from serve_support import Receiver, flat, free_port, inspect, noisy, one_torch_thread, serving, tiny_run, wait_for

__all__ = ["one_torch_thread", "tiny_run"]


def test_the_webhook_gets_every_decision_with_its_event_id(tiny_run, tmp_path):
    receiver = Receiver()
    try:
        with serving(tiny_run, tmp_path / "store", webhook=receiver.url) as (client, _):
            ids = [i["id"] for i in inspect(client, noisy(1), flat(), noisy(2)).json()["inspections"]]
            wait_for(lambda: len(receiver.events) == 3)
            assert [e["inspection"]["id"] for e in receiver.events] == ids
            assert receiver.headers == [e["event_id"] for e in receiver.events] == [f"inspection-{i}" for i in ids]
            metrics = client.get("/api/v1/metrics").json()["webhook"]
            assert (metrics["pending"], metrics["delivered"], metrics["dropped"]) == (0, 3, 0)
    finally:
        receiver.close()


def test_only_defective_decisions_are_posted_when_asked(tiny_run, tmp_path):
    receiver = Receiver()
    try:
        with serving(tiny_run, tmp_path / "store", webhook=receiver.url, webhook_only_defective=True) as (client, _):
            inspect(client, noisy(1), flat(), noisy(2))
            wait_for(lambda: len(receiver.events) == 2)
            assert {e["inspection"]["decision"] for e in receiver.events} == {"defective"}
    finally:
        receiver.close()


def test_a_receiver_that_is_down_gets_the_outbox_when_it_returns_even_after_a_restart(tiny_run, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    store = tmp_path / "store"
    with serving(tiny_run, store, webhook=url) as (client, _):
        started = time.perf_counter()
        first = inspect(client, noisy(1)).json()["inspections"][0]["id"]
        assert time.perf_counter() - started < 5
        assert client.get("/api/v1/metrics").json()["webhook"]["pending"] == 1
    with serving(tiny_run, store, webhook=url) as (client, _):
        second = inspect(client, noisy(2)).json()["inspections"][0]["id"]
        receiver = Receiver(port)
        try:
            wait_for(lambda: len(receiver.events) >= 2)
            wait_for(lambda: client.get("/api/v1/metrics").json()["webhook"]["pending"] == 0)
            ids = [e["inspection"]["id"] for e in receiver.events]
            assert set(ids) == {first, second} and ids[0] == first
            assert len(set(receiver.headers)) == 2
        finally:
            receiver.close()


def test_a_full_outbox_drops_the_oldest_events_and_counts_them(tiny_run, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/hook"
    with serving(tiny_run, tmp_path / "store", webhook=url, max_outbox=2) as (client, service):
        ids = [i["id"] for i in inspect(client, noisy(1), noisy(2), flat(), flat(90)).json()["inspections"]]
        webhook = client.get("/api/v1/metrics").json()["webhook"]
        assert (webhook["pending"], webhook["dropped"]) == (2, 2)
        kept = [json.loads(row["payload"])["inspection"]["id"] for row in service.store.next_events(10)]
        assert kept == ids[2:]


def _write(folder: Path, name: str, data: bytes) -> None:
    temporary = folder / f".{name}.part"
    temporary.write_bytes(data)
    temporary.rename(folder / name)


def test_watched_files_are_inspected_once_across_a_restart(tiny_run, tmp_path):
    folder, store = tmp_path / "camera", tmp_path / "store"
    folder.mkdir()
    _write(folder, "before-1.png", noisy(1))
    _write(folder, "before-2.png", flat())
    (folder / "notes.txt").write_text("not an image")

    def inspected(client) -> list[str]:
        return sorted(i["file_name"] for i in client.get("/api/v1/inspections").json()["inspections"])

    settings = {"watch": str(folder), "watch_interval_s": 0.05}
    with serving(tiny_run, store, **settings) as (client, _):
        wait_for(lambda: len(inspected(client)) == 2)
        _write(folder, "during.png", noisy(2))
        (folder / "broken.png").write_bytes(b"\x89PNG broken")
        wait_for(lambda: len(inspected(client)) == 3)
        time.sleep(0.3)
    _write(folder, "while-down.png", flat(60))
    with serving(tiny_run, store, **settings) as (client, service):
        wait_for(lambda: len(inspected(client)) == 4)
        _write(folder, "after.png", noisy(3))
        wait_for(lambda: len(inspected(client)) == 5)
        time.sleep(0.3)
        assert inspected(client) == ["after.png", "before-1.png", "before-2.png", "during.png", "while-down.png"]
        items = client.get("/api/v1/inspections").json()["inspections"]
        assert {i["source"] for i in items} == {"watch:camera"}
        errors = service.store.query("SELECT path, error FROM watch_seen WHERE error IS NOT NULL")
        assert [row["path"] for row in errors] == ["broken.png"] and "broken.png" in errors[0]["error"]
