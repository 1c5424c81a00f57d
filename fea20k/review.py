"""The review page: a local web page to accept, reject, edit or flag a round's rows (``fea20k review``).

:class:`ReviewSession` holds the round's rows to review (every rejected row of the validate stage, plus a seeded
random sample of accepted rows), re-runs the validator checks on an edited rationale and appends decisions to
``reviews/round-N.jsonl`` (format in :mod:`fea20k.publish.reviews`). :func:`make_server` serves it with the
stdlib's ``ThreadingHTTPServer`` on 127.0.0.1 only: no dependency, and the page is one template,
``cards/review.html``, with plain JS (works offline).

Every request must carry the session's random token (``?token=`` or the ``X-Fea20k-Token`` header), so another
local user who finds the port can neither read nor write. Each decision is one appended line, written under the
workspace lock (:mod:`fea20k.lock`) for that line only: two tabs (or two reviewers) never lose each other's writes,
and the page re-reads the file on every load (the last line about a row wins).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fea20k.audit import Filters, collect, iter_rejections, rationale_segments, stage_dirs
from fea20k.errors import Fea20kUserError
from fea20k.io import PART_GLOB, read_chunk
from fea20k.lock import WorkspaceLockedError
from fea20k.publish.reviews import Review, load_reviews, reviews_path, row_signature
from fea20k.record import FaceRecord
from fea20k.review_sample import DEFAULT_RATE, DEFAULT_SEED, sampled


logger = logging.getLogger(__name__)

HOST = "127.0.0.1"  # loopback only: the page writes the workspace
TOKEN_HEADER = "X-Fea20k-Token"
DEFAULT_RULES = "validators/default.toml"
MAX_BODY = 1 << 20  # an edited rationale is a few KB; refuse anything absurd
GT_WRONG_REASON = "gt_wrong"
ACTIONS = ("accept", "reject", "edit", "flag_gt")


class ReviewError(Fea20kUserError):
    """A decision the page sent cannot be recorded (unknown row, bad action, an edit that fails the checks)."""


@dataclass
class ReviewSession:
    """The rows of one round to review and the decisions made about them."""

    root: Path
    round: int
    reviewer: str
    sample_rate: float = DEFAULT_RATE
    seed: int = DEFAULT_SEED
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    rows: dict[str, FaceRecord] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # id -> "rejected" | "sample"
    _rules: dict[str, Any] = field(default_factory=dict)
    _write_guard: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, workspace: Path, round_: int, reviewer: str, sample_rate: float = DEFAULT_RATE,
             seed: int = DEFAULT_SEED) -> ReviewSession:
        """Load the round's rejected rows and the seeded sample of its accepted rows (the rule of
        :mod:`fea20k.review_sample`, which the ``review.gate`` step counts decisions on)."""
        from fea20k.workspace import Workspace

        if not 0.0 <= sample_rate <= 1.0:
            raise Fea20kUserError(f"--sample-rate {sample_rate} must be between 0 and 1")
        ws = Workspace(workspace)
        data = collect(ws, round_)
        if data.pool_stage is None:
            raise Fea20kUserError(f"round {round_} has no stage output in {ws.round_dir(round_)}; "
                                  f"run `fea20k build --round {round_} -w {workspace}` first")
        s = cls(root=ws.root, round=round_, reviewer=reviewer, sample_rate=sample_rate, seed=seed)
        for rec in iter_rejections(ws, data, Filters(), None):
            s.rows[rec.id] = rec
            s.kinds[rec.id] = "rejected"
        pool = dict(stage_dirs(ws, round_))[data.pool_stage]
        for part in sorted(pool.glob(PART_GLOB)):
            for rec in read_chunk(part):
                if rec.accepted and rec.id not in s.rows and sampled(rec.id, seed, sample_rate):
                    s.rows[rec.id] = rec
                    s.kinds[rec.id] = "sample"
        logger.info("round %d: %d rejected and %d sampled accepted row(s) to review", round_,
                    sum(k == "rejected" for k in s.kinds.values()), sum(k == "sample" for k in s.kinds.values()))
        return s

    # -- reading

    def reviews(self) -> dict[str, Review]:
        """The decisions so far, re-read from the file (another tab or reviewer may have appended)."""
        return load_reviews(self.root, self.round)

    def row_json(self, rec: FaceRecord) -> dict[str, Any]:
        """One card's data: ground truth, coloured rationale, reasons, every attempt."""
        r = rec.rationale
        text = r.text if r is not None else None
        details = rec.meta.get("validate", {}) if isinstance(rec.meta, dict) else {}
        last = r.raw[-1] if r is not None and not text and r.raw else None
        attempts = []
        if r is not None:
            for i, raw in enumerate(r.raw):
                attempts.append({"n": i + 1, "text": raw, "error": r.errors[i] if i < len(r.errors) else None})
        return {
            "id": rec.id, "source": rec.source, "split": rec.split, "kind": self.kinds[rec.id],
            "emotion": rec.emotion, "emotion_origin": rec.emotion_origin, "aus_present": rec.present_aus(),
            "au_coded": sorted(rec.au_coded), "reasons": rec.reasons, "excluded_at": rec.excluded_at,
            "rationale": text, "segments": rationale_segments(text, rec) if text else [],
            # a row whose every attempt failed keeps no rationale: show (and let the reviewer repair) the last reply
            "last_reply": last, "last_segments": rationale_segments(last, rec) if last else [],
            "details": details, "attempts": attempts,
            "n_attempts": max(r.attempts, len(r.raw)) if r is not None else 0,
            "annotator": r.annotator if r is not None else None, "model": r.model if r is not None else None,
            "signature": row_signature(rec), "has_face": bool(rec.face),
        }

    def state(self) -> dict[str, Any]:
        """Everything the page shows: rows in order (rejected first) and the current decision of each."""
        # rejected rows with text to judge first; exclusions without a rationale (duplicates, bad crops) after them
        order = sorted(self.rows, key=lambda i: (self.kinds[i] != "rejected", not _has_text(self.rows[i]), i))
        return {"round": self.round, "reviewer": self.reviewer, "sample_rate": self.sample_rate, "seed": self.seed,
                "rows": [self.row_json(self.rows[i]) for i in order],
                "reviews": {k: review_json(v) for k, v in self.reviews().items() if k in self.rows}}

    # -- checks and decisions

    def rules_for(self, rec: FaceRecord) -> Any:
        """The rule set the validate stage applied to ``rec`` (named in its provenance), loaded once."""
        from fea20k.validate.checks import load_ruleset

        where = (rec.provenance.get("validate") or DEFAULT_RULES).split("@", 1)[0]
        if where not in self._rules:
            path = self.root / where
            if not path.is_file():
                raise Fea20kUserError(f"rule set {path} (used by the validate stage for {rec.id}) is missing; "
                                      "restore it or rebuild the round")
            self._rules[where] = load_ruleset(path, where=where)
        return self._rules[where]

    def check(self, rec_id: str, text: str) -> dict[str, Any]:
        """Run the validator's per-record checks on an edited rationale (template collapse needs the round)."""
        from fea20k.validate.checks import check_text

        rec = self._row(rec_id)
        res = check_text(text, rec, self.rules_for(rec))
        return {"passed": res.passed, "reasons": res.reasons, "scores": res.scores,
                "segments": rationale_segments(text, rec), **res.details()}

    def decide(self, rec_id: str, action: str, reason: str | None = None, note: str | None = None,
               rationale: str | None = None) -> dict[str, Any]:
        """Append one decision line under the workspace lock; return it as the page shows it."""
        rec = self._row(rec_id)
        line: dict[str, Any] = {"id": rec_id, "reviewer": self.reviewer,
                                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "signature": row_signature(rec)}
        if action == "accept":
            line["decision"] = "accept"
        elif action == "reject":
            if not reason:
                raise ReviewError(f"reject of {rec_id} needs a reason code")
            line.update(decision="reject", reason=reason)
        elif action == "flag_gt":
            # a wrong label makes the row unfit whatever its rationale says: kept out of the release
            line.update(decision="reject", reason=GT_WRONG_REASON, gt_wrong=True)
        elif action == "edit":
            if not rationale or not rationale.strip():
                raise ReviewError(f"edit of {rec_id} needs the new rationale text")
            result = self.check(rec_id, rationale)
            if not result["passed"]:
                raise ReviewError(f"the edited rationale of {rec_id} fails the checks: {', '.join(result['reasons'])};"
                                  " fix it or reject the row")
            line.update(decision="accept", rationale=rationale)
        else:
            raise ReviewError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        if note:
            line["note"] = note
        self._append(line)
        logger.info("review of %s: %s by %s", rec_id, action, self.reviewer)
        return line

    def _row(self, rec_id: str) -> FaceRecord:
        try:
            return self.rows[rec_id]
        except KeyError:
            raise ReviewError(f"{rec_id!r} is not a row of round {self.round}'s review; reload the page") from None

    def _append(self, line: dict[str, Any]) -> None:
        from fea20k.lock import workspace_lock

        path = reviews_path(self.root, self.round)
        # the thread guard orders this server's own writers; the workspace lock keeps out builds, publishes and
        # other review servers, held only for the append (a build holding it makes this request fail, not hang)
        with self._write_guard, workspace_lock(self.root, f"fea20k review --round {self.round}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                f.flush()


def _has_text(rec: FaceRecord) -> bool:
    return rec.rationale is not None and bool(rec.rationale.text or rec.rationale.raw)


def review_json(r: Review) -> dict[str, Any]:
    """A decision as the page shows it."""
    return {k: getattr(r, k) for k in Review.__slots__ if getattr(r, k) is not None}


# ---------------------------------------------------------------------------------------------- the server


def page_html(session: ReviewSession) -> str:
    """The page: ``cards/review.html`` with the round's title filled in (the data comes from /api/rows)."""
    from fea20k.resources import data_path

    page = data_path("cards", "review.html").read_text(encoding="utf-8")
    return page.replace("{{ title }}", f"fea20k review · round {session.round}")


def make_server(session: ReviewSession, port: int = 0) -> ThreadingHTTPServer:
    """A server for ``session`` bound to 127.0.0.1:``port`` (0 = a free port); call ``serve_forever``."""

    class Handler(_Handler):
        sess = session

    server = ThreadingHTTPServer((HOST, port), Handler)
    server.daemon_threads = True
    return server


def server_url(server: ThreadingHTTPServer, session: ReviewSession) -> str:
    """The page's URL, token included."""
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/?token={session.token}"


class _Handler(BaseHTTPRequestHandler):
    sess: ReviewSession
    server_version = "fea20k-review"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's signature)
        logger.debug("%s " + format, self.address_string(), *args)

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        given = self.headers.get(TOKEN_HEADER) or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode("utf-8"), self.sess.token.encode("utf-8"))

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _start(self) -> tuple[str, dict[str, list[str]]] | None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._authorised(query):
            self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token; open the URL `fea20k review` printed"})
            return None
        return url.path, query

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        start = self._start()
        if start is None:
            return
        path, query = start
        if path == "/":
            self._send(HTTPStatus.OK, page_html(self.sess).encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/api/rows":
            self._json(HTTPStatus.OK, self.sess.state())
        elif path == "/face":
            rec = self.sess.rows.get((query.get("id") or [""])[0])
            if rec is None or not rec.face:
                self._json(HTTPStatus.NOT_FOUND, {"error": "no face for this id"})
                return
            png = rec.face[:8] == b"\x89PNG\r\n\x1a\n"
            self._send(HTTPStatus.OK, rec.face, "image/png" if png else "image/jpeg")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        start = self._start()
        if start is None:
            return
        path, _ = start
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_BODY:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"body must be JSON of at most {MAX_BODY} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(size) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad JSON body: {e}"})
            return
        try:
            if path == "/api/check":
                self._json(HTTPStatus.OK, self.sess.check(str(body.get("id")), str(body.get("text") or "")))
            elif path == "/api/decide":
                line = self.sess.decide(str(body.get("id")), str(body.get("action")), reason=body.get("reason"),
                                        note=body.get("note"), rationale=body.get("rationale"))
                self._json(HTTPStatus.OK, {"saved": line, "reviews": self.sess.state()["reviews"]})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {path}"})
        except Fea20kUserError as e:  # bad decision, workspace locked by a build, malformed reviews file
            status = HTTPStatus.CONFLICT if isinstance(e, WorkspaceLockedError) else HTTPStatus.UNPROCESSABLE_ENTITY
            self._json(status, {"error": str(e)})
