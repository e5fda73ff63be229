"""`draem serve` as a process on loopback: SIGKILL mid-load loses no acknowledged inspection; SIGTERM drains."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from serve_support import Receiver, free_port, noisy, one_torch_thread, post, start, tiny_run, wait_for

__all__ = ["one_torch_thread", "tiny_run"]


def stored_ids(store: Path) -> set[str]:
    with sqlite3.connect(store / "history.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {row[0] for row in connection.execute("SELECT id FROM inspections")}


@pytest.mark.slow
def test_sigkill_under_load_keeps_every_acknowledged_inspection_and_its_webhook_event(tiny_run, tmp_path):
    store, port = tmp_path / "store", free_port()
    receiver = Receiver()
    process = start(tiny_run, store, port, "--batch-wait-ms", "1", "--webhook", receiver.url)
    acknowledged: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        while not stop.is_set():
            status, ids = post(port, [noisy(seed), noisy(seed + 1)])
            statuses.append(status)
            acknowledged.extend(ids)

    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in clients:
        thread.start()
    while len(acknowledged) < 40:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stop.set()
    for thread in clients:
        thread.join()
    assert set(acknowledged) <= stored_ids(store)
    process = start(tiny_run, store, port, "--webhook", receiver.url)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/inspections?limit=1") as answer:
            total = json.load(answer)["total"]
        assert total >= len(acknowledged) and set(statuses) <= {0, 200}
        files = {p.name.split(".")[0] for p in (store / "files").rglob("*") if p.is_file()}
        assert set(acknowledged) <= files and files <= stored_ids(store)
        wait_for(lambda: set(acknowledged) <= {e["inspection"]["id"] for e in receiver.events}, 60)
        assert len(set(receiver.headers)) == len({e["inspection"]["id"] for e in receiver.events})
        print(f"SIGKILL restart: {len(acknowledged)} acknowledged, {total} rows after restart, integrity ok, "
              f"{len(receiver.events)} webhook deliveries of {len(set(receiver.headers))} events")
    finally:
        process.terminate()
        process.wait(timeout=30)
        receiver.close()


@pytest.mark.slow
def test_sigterm_answers_the_queued_requests_then_exits(tiny_run, tmp_path):
    store, port = tmp_path / "store", free_port()
    process = start(tiny_run, store, port, "--batch-size", "1", "--batch-wait-ms", "0", "--queue-depth", "1024")
    answers: list[tuple[int, list[str]]] = []
    images = [noisy(seed, 256) for seed in range(16)]
    clients = [threading.Thread(target=lambda: answers.append(post(port, images))) for _ in range(12)]
    for thread in clients:
        thread.start()
    until = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health") as answer:
            if json.load(answer)["queue_depth"] >= 8:
                break
        assert time.monotonic() < until, "the queue never filled"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    for thread in clients:
        thread.join()
    answered = [ids for status, ids in answers if status == 200]
    assert answered and all(status in (0, 200) for status, _ in answers)
    assert {i for ids in answered for i in ids} == stored_ids(store)
    print(f"SIGTERM: {len(answered)} of {len(answers)} requests answered after the drain, the rest refused")
