"""The workspace ledger: one SQLite database (WAL) holding runs, stage states, the model-call cache and costs."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fea20k.errors import Fea20kError
from fea20k.procs import NO_LEDGER_ENV
from fea20k.redact import mask


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL,
    command TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL            -- running | done | failed | interrupted
);
CREATE TABLE IF NOT EXISTS stages (
    round INTEGER NOT NULL,
    stage TEXT NOT NULL,            -- stage key, e.g. faces.align or ingest/rafdb
    signature TEXT NOT NULL,
    status TEXT NOT NULL,           -- running | done | failed | interrupted | pending
    pid INTEGER,
    started REAL,
    finished REAL,
    error TEXT,
    stats TEXT,                     -- JSON StageStats
    PRIMARY KEY (round, stage)
);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,           -- sha256 of the canonical request (image content hash in place of its bytes)
    annotator TEXT NOT NULL,
    model TEXT,
    response TEXT NOT NULL,         -- JSON: the backend's reply (text, usage, finish reason)
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    round INTEGER,
    stage TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER,
    stage TEXT,
    annotator TEXT,
    model TEXT,
    status TEXT NOT NULL,           -- ok | error
    error TEXT,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    seconds REAL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,            -- the Batch API's id; submitting-<token> until it is known; export-<time>
    round INTEGER NOT NULL,
    stage TEXT NOT NULL,
    annotator TEXT NOT NULL,
    model TEXT,
    input_file_id TEXT,
    status TEXT NOT NULL,           -- submitting | submitted | collected | expired | failed | cancelled | exported
    requests INTEGER NOT NULL,
    keys TEXT NOT NULL,             -- JSON list of the request cache keys (the lines' custom_id)
    submitted REAL NOT NULL,
    collected REAL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    round INTEGER NOT NULL,
    stage TEXT NOT NULL,
    path TEXT NOT NULL,
    signature TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (round, stage)
);
CREATE TABLE IF NOT EXISTS releases (
    round INTEGER NOT NULL,
    target TEXT NOT NULL,           -- folder or org/name
    tag TEXT,
    revision TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (round, target)
);
"""


@dataclass
class StageState:
    round: int
    stage: str
    signature: str
    status: str
    pid: int | None
    started: float | None
    finished: float | None
    error: str | None
    stats: dict[str, Any] | None


class LedgerOwnerError(Fea20kError, RuntimeError):
    """A worker process tried to open the workspace ledger: only the build process may (see :class:`Ledger`)."""


class Ledger:
    """Thin wrapper over the workspace's SQLite ledger. One connection per process (open lazily).

    Only the build process opens it: SQLite's WAL mode needs every writer on one host, which a multi-node cluster on
    a shared filesystem breaks. Worker processes (``procs.worker_pool``, Ray workers, annotate client processes) run
    with :data:`~fea20k.procs.NO_LEDGER_ENV` set, where this constructor raises; they reach the build's ledger
    through :mod:`fea20k.ledger_service` instead (``StageContext.workspace.ledger`` gives them the client)."""

    def __init__(self, path: Path) -> None:
        if os.environ.get(NO_LEDGER_ENV):
            raise LedgerOwnerError(
                f"{path}: this is a worker process ({NO_LEDGER_ENV} is set), which may not open the workspace "
                "ledger; the build process owns it and serves it: reach it through the stage's "
                "ctx.workspace.ledger, which the engine points at its ledger service (fea20k.ledger_service)")
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- runs
    def start_run(self, round_: int, command: str) -> int:
        cur = self.conn.execute(
            "INSERT INTO runs(round, command, pid, started, status) VALUES (?, ?, ?, ?, 'running')",
            (round_, command, os.getpid(), time.time()),
        )
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: str) -> None:
        self.conn.execute("UPDATE runs SET finished = ?, status = ? WHERE run_id = ?", (time.time(), status, run_id))

    def mark_interrupted(self, stale: Callable[[int], bool]) -> tuple[int, int]:
        """Set the ``running`` runs and stages whose pid ``stale(pid)`` says is gone to ``interrupted``; return how
        many of each. Reads first (never waits on a writer) and writes only when there is something to mark."""
        found = {}
        for table, key in (("runs", "run_id"), ("stages", "rowid")):
            rows = self.conn.execute(f"SELECT {key}, pid FROM {table} WHERE status = 'running'").fetchall()
            found[table] = [k for k, pid in rows if stale(pid)]
        now = time.time()
        for table, key in (("runs", "run_id"), ("stages", "rowid")):
            for k in found[table]:
                self.conn.execute(f"UPDATE {table} SET status = 'interrupted', finished = ? WHERE {key} = ? "
                                  "AND status = 'running'", (now, k))
        return len(found["runs"]), len(found["stages"])

    # -- stages
    def stage_started(self, round_: int, stage: str, signature: str) -> None:
        self.conn.execute(
            "INSERT INTO stages(round, stage, signature, status, pid, started) VALUES (?, ?, ?, 'running', ?, ?) "
            "ON CONFLICT(round, stage) DO UPDATE SET signature = excluded.signature, status = 'running', "
            "pid = excluded.pid, started = excluded.started, finished = NULL, error = NULL",
            (round_, stage, signature, os.getpid(), time.time()),
        )

    def stage_finished(
        self, round_: int, stage: str, status: str, stats: dict | None = None, error: str | None = None
    ) -> None:
        self.conn.execute(
            "UPDATE stages SET status = ?, finished = ?, error = ?, stats = ? WHERE round = ? AND stage = ?",
            (status, time.time(), mask(error), json.dumps(stats) if stats is not None else None, round_, stage),
        )

    def stage_state(self, round_: int, stage: str) -> StageState | None:
        row = self.conn.execute(
            "SELECT round, stage, signature, status, pid, started, finished, error, stats FROM stages "
            "WHERE round = ? AND stage = ?",
            (round_, stage),
        ).fetchone()
        if row is None:
            return None
        return StageState(*row[:8], stats=json.loads(row[8]) if row[8] else None)

    # -- model-call cache
    def cache_get(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT response FROM requests WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def cache_put(
        self,
        key: str,
        annotator: str,
        model: str | None,
        response: dict[str, Any],
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost: float = 0.0,
        round_: int | None = None,
        stage: str | None = None,
    ) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO requests(key, annotator, model, response, tokens_in, tokens_out, cost, round, "
            "stage, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, annotator, model, json.dumps(response), tokens_in, tokens_out, cost, round_, stage, time.time()),
        )

    def record_replies(self, cached: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
        """Cache answers (each the keyword arguments of :meth:`cache_put`) and account calls (each those of
        :meth:`record_call`) in one transaction: a ``kill -9`` keeps both or neither, so a paid call is never lost
        from the cache while its cost is counted (or the other way round)."""
        with self.transaction():
            for entry in cached:
                self.cache_put(**entry)
            for call in calls:
                self.record_call(**call)

    def spent(self, round_: int, stage: str, annotator: str) -> float:
        """Dollars one annotator's calls of one stage have cost in a round (a budget's starting point)."""
        row = self.conn.execute(
            "SELECT COALESCE(SUM(cost), 0) FROM calls WHERE round = ? AND stage = ? AND annotator = ?",
            (round_, stage, annotator)).fetchone()
        return float(row[0])

    def record_call(self, **fields: Any) -> None:
        """Account one model call (ok or error) for cost reporting; its error text is masked (fea20k.redact)."""
        fields.setdefault("created", time.time())
        if fields.get("error"):
            fields["error"] = mask(fields["error"])
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self.conn.execute(f"INSERT INTO calls({cols}) VALUES ({marks})", tuple(fields.values()))

    def cost_summary(self, round_: int | None = None) -> dict[str, float]:
        """Tokens and cost of the calls actually made (cache hits cost nothing), for a round or overall."""
        return self._costs(None, round_)[None]

    def cost_by_stage(self, round_: int) -> dict[str | None, dict[str, Any]]:
        """Calls, tokens and cost of one round per stage key (only stages that made calls), in one query; the
        figures of :meth:`cost_summary`, split."""
        return self._costs("stage", round_)

    def cost_by_annotator(self) -> dict[str | None, dict[str, Any]]:
        """Calls, tokens and cost per annotator name over all rounds (only annotators that made calls)."""
        return self._costs("annotator", None)

    def _costs(self, group: str | None, round_: int | None) -> dict[str | None, dict[str, Any]]:
        """The calls, tokens and cost of :meth:`cost_summary`, per value of column ``group`` (None: one total)."""
        key = group or "NULL"
        where, args = ("WHERE round = ?", (round_,)) if round_ is not None else ("", ())
        grouping = f"GROUP BY {group} ORDER BY {group}" if group else ""
        rows = self.conn.execute(
            f"SELECT {key}, COUNT(*), COALESCE(SUM(tokens_in),0), COALESCE(SUM(tokens_out),0), COALESCE(SUM(cost),0) "
            f"FROM calls {where} {grouping}",
            args,
        ).fetchall()
        return {k: {"calls": calls, "tokens_in": t_in, "tokens_out": t_out, "cost_usd": cost}
                for k, calls, t_in, t_out, cost in rows}

    # -- Batch API batches (fea20k.annotate.batch)
    def record_batch(self, batch_id: str, round_: int, stage: str, annotator: str, model: str | None,
                     input_file_id: str | None, keys: list[str], status: str = "submitted") -> None:
        self.conn.execute(
            "INSERT INTO batches(id, round, stage, annotator, model, input_file_id, status, requests, keys, "
            "submitted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (batch_id, round_, stage, annotator, model, input_file_id, status, len(keys), json.dumps(keys),
             time.time()),
        )

    def open_batches(self, round_: int, stage: str, annotator: str) -> list[dict[str, Any]]:
        """The batches of a stage submitted and not yet collected, oldest first."""
        rows = self.conn.execute(
            "SELECT id, requests, submitted FROM batches WHERE round = ? AND stage = ? AND annotator = ? "
            "AND status IN ('submitting', 'submitted') ORDER BY submitted", (round_, stage, annotator)).fetchall()
        return [{"id": i, "requests": n, "submitted": t} for i, n, t in rows]

    def adopt_batch(self, placeholder: str, batch_id: str, input_file_id: str | None) -> None:
        """Give a ``submitting-<token>`` row the id of the batch the Batch API created for it."""
        self.conn.execute("UPDATE batches SET id = ?, input_file_id = ?, status = 'submitted' WHERE id = ?",
                          (batch_id, input_file_id, placeholder))

    def drop_batch(self, batch_id: str) -> None:
        self.conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    def close_batch(self, batch_id: str, status: str) -> None:
        self.conn.execute("UPDATE batches SET status = ?, collected = ? WHERE id = ?",
                          (status, time.time(), batch_id))

    def batch_for_keys(self) -> dict[str, tuple[str, str | None, int, str]]:
        """request key -> (annotator, model, round, stage) of every batch or export recorded."""
        out: dict[str, tuple[str, str | None, int, str]] = {}
        for annotator, model, round_, stage, keys in self.conn.execute(
                "SELECT annotator, model, round, stage, keys FROM batches ORDER BY submitted"):
            for k in json.loads(keys):
                out[k] = (annotator, model, round_, stage)
        return out

    # -- checkpoints and releases
    def record_checkpoint(self, round_: int, stage: str, path: str, signature: str | None = None) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints(round, stage, path, signature, created) VALUES (?, ?, ?, ?, ?)",
            (round_, stage, path, signature, time.time()),
        )

    def checkpoint(self, round_: int, stage: str | None = None) -> str | None:
        q = "SELECT path FROM checkpoints WHERE round = ?" + (" AND stage = ?" if stage else "") + " ORDER BY created"
        rows = self.conn.execute(q, (round_, stage) if stage else (round_,)).fetchall()
        return rows[-1][0] if rows else None

    def checkpoint_identity(self, round_: int) -> str | None:
        """The checkpoint :meth:`checkpoint` resolves for ``round_``, as ``path@<signature>`` when it was registered
        with one (so a retrain into the same folder differs), else ``path``."""
        rows = self.conn.execute("SELECT path, signature FROM checkpoints WHERE round = ? ORDER BY created",
                                 (round_,)).fetchall()
        if not rows:
            return None
        path, signature = rows[-1]
        return f"{path}@{signature}" if signature else str(path)

    def record_release(self, round_: int, target: str, tag: str | None, revision: str | None = None) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO releases(round, target, tag, revision, created) VALUES (?, ?, ?, ?, ?)",
            (round_, target, tag, revision, time.time()),
        )

    def releases(self, round_: int) -> list[tuple[str, str | None]]:
        return self.conn.execute("SELECT target, tag FROM releases WHERE round = ?", (round_,)).fetchall()
