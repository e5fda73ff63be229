"""The service's history: one SQLite database (WAL, versioned schema) plus image and map files named by id."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from draem.errors import DraemError
from draem.files import write_bytes

FILE_KINDS = ("image", "map", "overlay", "thumbnail")

MIGRATIONS: list[str] = [
    """
    CREATE TABLE inspections (
        id TEXT PRIMARY KEY, created REAL NOT NULL, source TEXT, part_id TEXT, file_name TEXT,
        score REAL NOT NULL, normalized_score REAL, decision TEXT, threshold REAL, defect_area REAL,
        model_version TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
        image_ext TEXT NOT NULL, file_bytes INTEGER NOT NULL, files_pruned INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX inspections_created ON inspections (created);
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY AUTOINCREMENT, inspection_id TEXT NOT NULL REFERENCES inspections (id),
        verdict TEXT NOT NULL, note TEXT NOT NULL, operator TEXT, created REAL NOT NULL);
    CREATE INDEX reviews_inspection ON reviews (inspection_id);
    CREATE TABLE thresholds (
        id INTEGER PRIMARY KEY AUTOINCREMENT, model_version TEXT NOT NULL, image_threshold REAL NOT NULL,
        operator TEXT, created REAL NOT NULL);
    CREATE TABLE idempotency (key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL NOT NULL);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
    CREATE TABLE watch_seen (path TEXT PRIMARY KEY, inspection_id TEXT, error TEXT, created REAL NOT NULL);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(connection: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring a database to the newest schema, one transaction per step; the version it ends at."""
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT version FROM schema_version").fetchone()
    version = row[0] if row else 0
    if version > len(migrations):
        raise DraemError(f"store schema version {version} is newer than this draem's ({len(migrations)}); "
                         "upgrade draem to serve it")
    for step in range(version, len(migrations)):
        with connection:
            connection.execute("BEGIN IMMEDIATE")
            for statement in migrations[step].split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("DELETE FROM schema_version")
            connection.execute("INSERT INTO schema_version VALUES (?)", (step + 1,))
    return len(migrations)


def utc_text(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC text with milliseconds."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(now: float) -> str:
    """A unique inspection id that sorts by time: UTC date-time plus random hex."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(5)


@dataclass
class Inspection:
    """One stored inspection: what the model said about one image."""

    id: str
    created: float
    source: str | None
    part_id: str | None
    file_name: str | None
    score: float
    normalized_score: float | None
    decision: str | None
    threshold: float | None
    defect_area: float | None
    model_version: str
    width: int
    height: int
    image_ext: str
    file_bytes: int
    files_pruned: int = 0


@dataclass(frozen=True)
class Filters:
    """What `GET /inspections` selects."""

    decision: str | None = None
    review: str | None = None
    since: float | None = None
    until: float | None = None
    source: str | None = None


class Store:
    """SQLite history plus files under one folder; safe to use from several threads."""

    def __init__(self, root: str | Path, max_outbox: int = 10000) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.max_outbox = max_outbox
        self.lock = threading.RLock()
        try:
            self.db = sqlite3.connect(self.root / "history.db", check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=5000")
            migrate(self.db)
        except sqlite3.DatabaseError as exc:
            raise DraemError(f"{self.root / 'history.db'}: not a usable store database ({exc})") from exc
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        """Close the database."""
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed when the block ends and rolled back when it raises."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read query."""
        with self.lock:
            return self.db.execute(sql, parameters).fetchall()

    # files -------------------------------------------------------------------------------------------------

    def file_path(self, inspection_id: str, kind: str, image_ext: str = "png") -> Path:
        """Where an inspection's image, map or overlay lives: files/<day>/<id>.<kind>."""
        name = {"image": f"{inspection_id}.{image_ext}", "map": f"{inspection_id}.map.png",
                "overlay": f"{inspection_id}.overlay.png", "thumbnail": f"{inspection_id}.thumbnail.png"}[kind]
        return self.files / inspection_id[:8] / name

    def write_files(self, inspection_id: str, contents: dict[str, bytes], image_ext: str) -> int:
        """Write an inspection's files atomically (all or none); the bytes written."""
        written: list[Path] = []
        try:
            for kind, data in contents.items():
                path = self.file_path(inspection_id, kind, image_ext)
                write_bytes(path, data)
                written.append(path)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return sum(len(data) for data in contents.values())

    def remove_files(self, inspection_id: str, image_ext: str) -> None:
        """Delete an inspection's files (those that exist)."""
        for kind in FILE_KINDS:
            self.file_path(inspection_id, kind, image_ext).unlink(missing_ok=True)

    def sweep_orphans(self) -> int:
        """Delete files without a committed row (a crash between writing them and committing) and temporaries."""
        kept = {row["id"] for row in self.query("SELECT id FROM inspections WHERE files_pruned = 0")}
        removed = 0
        for path in self.files.glob("*/*"):
            if path.name.startswith(".") or path.name.split(".")[0] not in kept:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # inspections -------------------------------------------------------------------------------------------

    def insert_inspections(self, connection: sqlite3.Connection, inspections: Sequence[Inspection]) -> None:
        """Add inspection rows inside a transaction."""
        for item in inspections:
            values = asdict(item)
            connection.execute(f"INSERT INTO inspections ({', '.join(values)}) VALUES "
                               f"({', '.join('?' * len(values))})", list(values.values()))

    def inspection(self, inspection_id: str) -> dict[str, Any] | None:
        """One inspection with its latest review, as the API shows it."""
        rows = self.query(f"{_SELECT} WHERE i.id = ?", (inspection_id,))
        return public(rows[0]) if rows else None

    def inspection_row(self, inspection_id: str) -> sqlite3.Row | None:
        """The raw row of an inspection."""
        rows = self.query("SELECT * FROM inspections WHERE id = ?", (inspection_id,))
        return rows[0] if rows else None

    def inspections(self, filters: Filters, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """(total matching, one page of them newest first)."""
        where, parameters = _where(filters)
        total = self.query(f"SELECT COUNT(*) FROM inspections i {_JOIN} {where}", parameters)[0][0]
        rows = self.query(f"{_SELECT} {where} ORDER BY i.created DESC, i.rowid DESC LIMIT ? OFFSET ?",
                          [*parameters, limit, offset])
        return total, [public(row) for row in rows]

    def counts_since(self, since: float) -> dict[str, int]:
        """Inspections since a time: total and per decision."""
        rows = self.query("SELECT COALESCE(decision, 'none') AS d, COUNT(*) AS n FROM inspections "
                          "WHERE created >= ? GROUP BY d", (since,))
        counts = {row["d"]: row["n"] for row in rows}
        return {"total": sum(counts.values()), "good": counts.get("good", 0),
                "defective": counts.get("defective", 0), "undecided": counts.get("none", 0)}

    # reviews and thresholds --------------------------------------------------------------------------------

    def add_review(self, inspection_id: str, verdict: str, note: str, operator: str | None) -> None:
        """Record an operator's verdict on an inspection."""
        with self.transaction() as connection:
            connection.execute("INSERT INTO reviews (inspection_id, verdict, note, operator, created) "
                               "VALUES (?, ?, ?, ?, ?)", (inspection_id, verdict, note, operator, time.time()))

    def reviewed_scores(self, model_version: str) -> list[dict[str, Any]]:
        """Score and latest verdict of every reviewed inspection of a model version."""
        rows = self.query(f"{_SELECT} WHERE r.verdict IS NOT NULL AND i.model_version = ?", (model_version,))
        return [{"id": row["id"], "score": row["score"], "verdict": row["verdict"]} for row in rows]

    def latest_reviews(self) -> list[sqlite3.Row]:
        """Every inspection with a review, joined to its latest review, oldest first."""
        return self.query(f"{_SELECT} WHERE r.verdict IS NOT NULL ORDER BY i.created, i.rowid")

    def set_threshold(self, model_version: str, value: float, operator: str | None) -> None:
        """Record a new image threshold for a model version."""
        with self.transaction() as connection:
            connection.execute("INSERT INTO thresholds (model_version, image_threshold, operator, created) "
                               "VALUES (?, ?, ?, ?)", (model_version, value, operator, time.time()))

    def threshold_history(self, model_version: str) -> list[dict[str, Any]]:
        """The thresholds set for a model version, newest first."""
        rows = self.query("SELECT * FROM thresholds WHERE model_version = ? ORDER BY id DESC", (model_version,))
        return [{"threshold": row["image_threshold"], "operator": row["operator"],
                 "timestamp": utc_text(row["created"])} for row in rows]

    # idempotency, counters ---------------------------------------------------------------------------------

    def idempotent_response(self, key: str) -> Any:
        """The stored answer to an earlier request with this Idempotency-Key, if any."""
        rows = self.query("SELECT response FROM idempotency WHERE key = ?", (key,))
        return json.loads(rows[0]["response"]) if rows else None

    def add_to_counter(self, connection: sqlite3.Connection, name: str, amount: int) -> None:
        """Add to a persistent counter inside a transaction."""
        connection.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                           "value = value + excluded.value", (name, amount))

    def counter(self, name: str) -> int:
        """A persistent counter's value."""
        rows = self.query("SELECT value FROM counters WHERE name = ?", (name,))
        return rows[0]["value"] if rows else 0

    # webhook outbox ----------------------------------------------------------------------------------------

    def enqueue_events(self, connection: sqlite3.Connection, events: Sequence[dict[str, Any]]) -> None:
        """Put events in the outbox inside a transaction; beyond its bound the oldest are dropped and counted."""
        for event in events:
            connection.execute("INSERT INTO outbox (event_id, payload, created) VALUES (?, ?, ?)",
                               (event["event_id"], json.dumps(event), time.time()))
        if not events:
            return
        excess = connection.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] - self.max_outbox
        if excess > 0:
            connection.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                               (excess,))
            self.add_to_counter(connection, "webhook_dropped", excess)

    def next_events(self, count: int) -> list[sqlite3.Row]:
        """The oldest events waiting in the outbox."""
        return self.query("SELECT * FROM outbox ORDER BY id LIMIT ?", (count,))

    def delivered(self, outbox_id: int) -> None:
        """Remove a delivered event from the outbox."""
        with self.transaction() as connection:
            if connection.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,)).rowcount:
                self.add_to_counter(connection, "webhook_delivered", 1)

    def failed_delivery(self, outbox_id: int) -> None:
        """Count a failed attempt at delivering an event."""
        with self.transaction() as connection:
            connection.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (outbox_id,))

    def outbox_size(self) -> int:
        """Events waiting for delivery."""
        return self.query("SELECT COUNT(*) FROM outbox")[0][0]

    # watch folder ------------------------------------------------------------------------------------------

    def seen_paths(self) -> set[str]:
        """Watch-folder files already handled."""
        return {row["path"] for row in self.query("SELECT path FROM watch_seen")}

    def mark_seen(self, connection: sqlite3.Connection, path: str, inspection_id: str | None,
                  error: str | None) -> None:
        """Record a watch-folder file as handled, inside a transaction."""
        connection.execute("INSERT INTO watch_seen VALUES (?, ?, ?, ?)", (path, inspection_id, error, time.time()))

    # retention ---------------------------------------------------------------------------------------------

    def stored_bytes(self) -> int:
        """Bytes of the image and map files still kept."""
        return self.query("SELECT COALESCE(SUM(file_bytes), 0) FROM inspections WHERE files_pruned = 0")[0][0]

    def prune(self, keep_days: float | None, max_bytes: int | None, now: float | None = None) -> int:
        """Delete the files of inspections older than keep_days and, oldest first, beyond max_bytes; rows stay."""
        now = time.time() if now is None else now
        doomed: list[sqlite3.Row] = []
        if keep_days is not None:
            doomed += self.query("SELECT id, image_ext, file_bytes FROM inspections WHERE files_pruned = 0 AND "
                                 "created < ? ORDER BY created", (now - keep_days * 86400,))
        if max_bytes is not None:
            excess = self.stored_bytes() - sum(row["file_bytes"] for row in doomed) - max_bytes
            chosen = {row["id"] for row in doomed}
            for row in self.query("SELECT id, image_ext, file_bytes FROM inspections WHERE files_pruned = 0 "
                                  "ORDER BY created, rowid"):
                if excess <= 0:
                    break
                if row["id"] not in chosen:
                    doomed.append(row)
                    excess -= row["file_bytes"]
        for row in doomed:
            with self.transaction() as connection:
                connection.execute("UPDATE inspections SET files_pruned = 1 WHERE id = ?", (row["id"],))
            self.remove_files(row["id"], row["image_ext"])
        return len(doomed)


_JOIN = "LEFT JOIN reviews r ON r.id = (SELECT MAX(id) FROM reviews WHERE inspection_id = i.id)"
_SELECT = (f"SELECT i.*, r.verdict, r.note, r.operator, r.created AS reviewed FROM inspections i {_JOIN}")


def _where(filters: Filters) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    parameters: list[Any] = []
    if filters.decision == "none":
        clauses.append("i.decision IS NULL")
    elif filters.decision:
        clauses.append("i.decision = ?")
        parameters.append(filters.decision)
    if filters.review == "unreviewed":
        clauses.append("r.verdict IS NULL")
    elif filters.review == "reviewed":
        clauses.append("r.verdict IS NOT NULL")
    elif filters.review:
        clauses.append("r.verdict = ?")
        parameters.append(filters.review)
    for column, operator, value in (("created", ">=", filters.since), ("created", "<", filters.until),
                                    ("source", "=", filters.source)):
        if value is not None:
            clauses.append(f"i.{column} {operator} ?")
            parameters.append(value)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", parameters


def public(row: sqlite3.Row) -> dict[str, Any]:
    """An inspection row (joined to its latest review) as the API's JSON object."""
    review = None
    if row["verdict"] is not None:
        review = {"verdict": row["verdict"], "note": row["note"], "operator": row["operator"],
                  "timestamp": utc_text(row["reviewed"])}
    return {"id": row["id"], "timestamp": utc_text(row["created"]), "source": row["source"],
            "part_id": row["part_id"], "file_name": row["file_name"], "score": row["score"],
            "normalized_score": row["normalized_score"], "decision": row["decision"], "threshold": row["threshold"],
            "defect_area": row["defect_area"], "model_version": row["model_version"], "width": row["width"],
            "height": row["height"], "files_kept": not row["files_pruned"], "review": review}
