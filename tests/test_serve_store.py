"""`draem serve`'s store: retention, a full disk, schema migrations, model swap, and `draem reviews export`."""

from __future__ import annotations

import csv
import errno
import sqlite3
import subprocess
import sys
import time

import pytest
from serve_support import flat, inspect, make_run, noisy, one_torch_thread, serving, stored_files, tiny_run

from draem.cli import main
from draem.errors import DraemError
from draem.serve import store as store_module
from draem.serve.exporter import export_reviews
from draem.serve.store import MIGRATIONS, SCHEMA_VERSION, Store, migrate

__all__ = ["one_torch_thread", "tiny_run"]


def test_retention_prunes_the_oldest_files_and_keeps_the_rows(tiny_run, tmp_path):
    store = tmp_path / "store"
    with serving(tiny_run, store) as (client, service):
        ids = [inspect(client, noisy(i)).json()["inspections"][0]["id"] for i in range(3)]
        total = service.store.stored_bytes()
        service.config.max_store_mb = (total - 1) / 2**20
        assert service.prune() == 1
        assert client.get(f"/api/v1/inspections/{ids[0]}/overlay").status_code == 410
        assert client.get(f"/api/v1/inspections/{ids[1]}/overlay").status_code == 200
        listed = client.get("/api/v1/inspections").json()
        assert listed["total"] == 3 and [i["files_kept"] for i in listed["inspections"]] == [True, True, False]
        client.post(f"/api/v1/inspections/{ids[0]}/review", json={"verdict": "good"})
        assert service.store.prune(keep_days=1, max_bytes=None, now=time.time() + 2 * 86400) == 2
        assert stored_files(store) == [] and client.get("/api/v1/inspections").json()["total"] == 3
        assert client.get(f"/api/v1/inspections/{ids[0]}").json()["review"]["verdict"] == "good"


def test_a_full_disk_answers_507_and_keeps_nothing(tiny_run, tmp_path, monkeypatch):
    store = tmp_path / "store"
    written = []
    real_write = store_module.write_bytes

    def fill_up(path, data):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        real_write(path, data)

    with serving(tiny_run, store) as (client, service):
        monkeypatch.setattr(store_module, "write_bytes", fill_up)
        answer = inspect(client, noisy(1))
        assert answer.status_code == 507 and "full" in answer.json()["detail"]
        assert written and stored_files(store) == []
        monkeypatch.setattr(store_module, "write_bytes", real_write)

        def database_full(*_):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(service.store, "insert_inspections", database_full)
        assert inspect(client, noisy(1), flat()).status_code == 507
        assert stored_files(store) == []
        monkeypatch.undo()
        assert inspect(client, noisy(1)).status_code == 200
        assert client.get("/api/v1/inspections").json()["total"] == 1


def test_files_left_without_a_row_are_swept_at_start(tiny_run, tmp_path):
    store = tmp_path / "store"
    with serving(tiny_run, store) as (client, _):
        kept = inspect(client, noisy(1)).json()["inspections"][0]["id"]
    orphan = store / "files" / "20240101" / "20240101T000000-abcdef0123.png"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")
    (store / "files" / kept[:8] / f".{kept}.png.x1.tmp").write_bytes(b"temp")
    with serving(tiny_run, store):
        assert {p.name.split(".")[0] for p in stored_files(store)} == {kept}
        assert len(stored_files(store)) == 4


def test_the_schema_migrates_step_by_step_and_refuses_a_newer_store(tmp_path):
    connection = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    assert migrate(connection, MIGRATIONS[:1]) == 1
    connection.execute("INSERT INTO counters VALUES ('webhook_dropped', 3)")
    later = [*MIGRATIONS[:1], "ALTER TABLE counters ADD COLUMN note TEXT"]
    assert migrate(connection, later) == 2
    assert connection.execute("SELECT * FROM counters").fetchall() == [("webhook_dropped", 3, None)]
    assert connection.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    assert migrate(connection, later) == 2
    with pytest.raises(DraemError, match="newer than this draem"):
        migrate(connection, MIGRATIONS[:1])
    store = Store(tmp_path / "store")
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.query("SELECT version FROM schema_version")[0][0] == SCHEMA_VERSION
    store.close()


def test_swapping_the_model_changes_version_and_keeps_thresholds_per_version(tiny_run, tmp_path):
    other = make_run(tmp_path / "other", seed=1)
    with serving(tiny_run, tmp_path / "store") as (client, _):
        first = inspect(client, noisy(1)).json()["inspections"][0]
        client.post("/api/v1/thresholds", json={"threshold": 0.99})
        swapped = client.post("/api/v1/model", json={"run": str(other)})
        assert swapped.status_code == 200 and swapped.json()["version"] != first["model_version"]
        second = inspect(client, noisy(1)).json()["inspections"][0]
        assert second["model_version"] == swapped.json()["version"]
        assert second["threshold"] == pytest.approx(0.53)
        assert client.get("/api/v1/thresholds").json()["history"] == []
        refused = client.post("/api/v1/model", json={"run": str(tmp_path / "missing")})
        assert refused.status_code == 400 and "missing" in refused.json()["detail"]
        assert client.get("/api/v1/model").json()["version"] == second["model_version"]
        client.post("/api/v1/model", json={"run": str(tiny_run)})
        assert inspect(client, noisy(1)).json()["inspections"][0]["threshold"] == 0.99


def test_reviews_export_writes_the_latest_verdicts_without_unsure(tiny_run, tmp_path, capsys):
    store = tmp_path / "store"
    with serving(tiny_run, store) as (client, _):
        items = inspect(client, noisy(1), flat(), noisy(2), flat(90), source="cam").json()["inspections"]
        verdicts = [("defective",), ("good",), ("good", "unsure"), ("defective", "good")]
        for item, sequence in zip(items, verdicts, strict=True):
            for verdict in sequence:
                client.post(f"/api/v1/inspections/{item['id']}/review", json={"verdict": verdict, "note": "n,1"})
    out = tmp_path / "reviewed"
    assert main(["reviews", "export", "--store", str(store), "--out", str(out)]) == 0
    assert "1 defective" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "defective").iterdir()) == [f"{items[0]['id']}.png"]
    assert sorted(p.name for p in (out / "good").iterdir()) == sorted(f"{items[i]['id']}.png" for i in (1, 3))
    assert (out / "good" / f"{items[1]['id']}.png").read_bytes() == flat()
    with open(out / "manifest.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["id"], r["verdict"]) for r in rows] == [(items[0]["id"], "defective"), (items[1]["id"], "good"),
                                                      (items[3]["id"], "good")]
    assert rows[0]["source"] == "cam" and rows[0]["note"] == "n,1" and rows[0]["model_version"]
    assert float(rows[0]["score"]) == pytest.approx(items[0]["score"])
    with pytest.raises(DraemError, match="not a draem serve store"):
        export_reviews(tmp_path / "nothing", out)


def test_serving_beyond_loopback_without_a_token_exits_at_once(tiny_run, capsys, monkeypatch):
    monkeypatch.delenv("DRAEM_TOKEN", raising=False)
    assert main(["serve", "--run", str(tiny_run), "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--token or DRAEM_TOKEN" in error
    assert main(["serve", "--run", str(tiny_run), "--batch-size", "0"]) == 2


def test_the_command_line_loads_the_web_stack_only_when_serving():
    code = "import sys, draem.cli; sys.exit('fastapi' in sys.modules or 'uvicorn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_serve_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 127.0.0.1)", "(default: 8000)", "(default: 8)", "(default: 5.0)", "(default: 64)",
                    "(default: 10000.0)", "(default: 32.0)", "(default: 50000000)", "(default: RUN/serve)"):
        assert default in text
