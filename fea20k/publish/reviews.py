"""Human reviews of a round's release: ``reviews/round-N.jsonl`` in the workspace.

One JSON object per line: ``{"id": "<record id>", "decision": "accept" | "reject", "note": "<optional text>"}``.
Lines written by ``fea20k review`` (:mod:`fea20k.review`) carry optional keys too: ``reviewer``, ``time`` (UTC,
ISO 8601), ``signature`` (a hash of the row as the reviewer saw it), ``reason`` (the reject reason code),
``rationale`` (an edited rationale that passed the validator checks) and ``gt_wrong`` (``true``: the reviewer
flagged the ground truth as wrong; such a line is a ``reject`` with reason ``gt_wrong``).
Blank lines and lines starting with ``#`` are ignored; when an id appears twice the later line wins (a reviewer
changing their mind appends a line). Any other problem is one :class:`ReviewFileError` naming the file, the line and
the fix.

How the publish stage applies them:

* ``reject`` of a released row moves it to the ``rejected`` config with the reason ``human_reject``
  (``excluded_at = "review"``), the note kept in ``review_note``.
* ``accept`` of a released row is recorded in its ``review`` column.
* ``accept`` of a row the automatic checks rejected is recorded in that row's ``review`` column (and counted on
  the card) but does **not** move it into train/test: every released row passed the checks the card describes. To
  release such rows, change the check or its threshold in ``validators/`` and rebuild (only validate and publish
  re-run).
* An edited ``rationale`` (it passed the validator checks when the reviewer saved it) replaces the row's rationale
  text in the release, with a ``review`` provenance entry naming the reviewer and the time; edits are counted on the
  card. The training exports (``fea20k export``, the ``train.*`` steps) take the same text (:func:`apply_edit`) and
  leave a rejected row out, so the model trains on what the release says. A ``gt_wrong`` flag is counted on the
  card (and, stored as a reject, moves a released row out).
* A decision whose ``signature`` (:func:`row_signature`) no longer matches the row was made on an earlier version of
  it (a rebuild changed its rationale, labels or verdict). Publish counts it on the card and warns once with the
  command to review again. Its edited rationale is not applied: it was written for the text the reviewer saw, and
  the row's new text stands. A stale reject (or ``gt_wrong`` flag) still keeps the row out: keeping a row a
  reviewer rejected out until someone looks again is the safe side. A stale accept changes nothing either way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fea20k.errors import Fea20kUserError
from fea20k.io import iter_jsonl


if TYPE_CHECKING:
    from fea20k.record import FaceRecord


DECISIONS = ("accept", "reject")
KEYS = ("id", "decision", "note", "reviewer", "time", "signature", "reason", "rationale", "gt_wrong")
_TEXT_KEYS = ("note", "reviewer", "time", "signature", "reason", "rationale")


class ReviewFileError(Fea20kUserError):
    """A reviews file has a malformed line."""


@dataclass(frozen=True, slots=True)
class Review:
    """One reviewer decision about one record."""

    id: str
    decision: str  # "accept" | "reject"
    note: str | None = None
    reviewer: str | None = None
    time: str | None = None
    signature: str | None = None
    reason: str | None = None  # reject reason code
    rationale: str | None = None  # edited rationale
    gt_wrong: bool | None = None  # ground truth flagged as wrong


def row_signature(rec: FaceRecord) -> str:
    """What the reviewer saw, hashed: id, rationale, labels and verdict (a rebuild that changes them changes it)."""
    text = rec.rationale.text if rec.rationale is not None else None
    body = json.dumps([rec.id, text, rec.emotion, rec.present_aus(), sorted(rec.au_coded), rec.accepted,
                       rec.reasons], sort_keys=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def edit_line(review: Review) -> str:
    """The provenance line of a reviewer's edited rationale (the release's ``review`` entry)."""
    return f"rationale edited by {review.reviewer or 'a reviewer'}" + (f" at {review.time}" if review.time else "")


def is_current(rec: FaceRecord, review: Review) -> bool:
    """Whether ``review`` was made on ``rec`` as it is now: its signature matches (or the line carries none)."""
    return not review.signature or review.signature == row_signature(rec)


def write_edit(rec: FaceRecord, review: Review) -> bool:
    """Put the review's edited rationale into ``rec`` over the rationale it has, with a ``review`` provenance entry;
    True when the text changed. The caller has checked :func:`is_current`."""
    if not review.rationale or rec.rationale is None or review.rationale == rec.rationale.text:
        return False
    rec.rationale.text = review.rationale
    rec.provenance["review"] = edit_line(review)
    return True


def apply_edit(rec: FaceRecord, review: Review | None) -> bool:
    """Give ``rec`` the rationale a reviewer edited for it, as the release carries it: an edit made on the row as it
    is (:func:`is_current`) over a rationale the row has (:func:`write_edit`). A training export takes the same
    text, so the model trains on what the release says. True when the text changed."""
    return review is not None and bool(review.rationale) and is_current(rec, review) and write_edit(rec, review)


def latest_reviews(workspace_root: Path, rounds: range) -> dict[str, Review]:
    """The decision about each id over ``rounds`` (a later round's line overrides an earlier round's)."""
    out: dict[str, Review] = {}
    for k in rounds:
        out.update(load_reviews(workspace_root, k))
    return out


def reviews_path(workspace_root: Path, round_: int) -> Path:
    """Where the reviews of round ``round_`` live."""
    return Path(workspace_root) / "reviews" / f"round-{round_}.jsonl"


def load_reviews(workspace_root: Path, round_: int) -> dict[str, Review]:
    """The reviews of round ``round_`` by record id (empty when the file does not exist)."""
    path = reviews_path(workspace_root, round_)
    if not path.is_file():
        return {}
    out: dict[str, Review] = {}
    fix = 'each line must be {"id": "...", "decision": "accept" or "reject", "note": "..."}'
    for lineno, obj in iter_jsonl(path, ReviewFileError, comment="#", hint=fix):
        if not isinstance(obj, dict):
            raise ReviewFileError(f"{path}:{lineno}: expected a JSON object; {fix}")
        unknown = sorted(set(obj) - set(KEYS))
        if unknown:
            raise ReviewFileError(f"{path}:{lineno}: unknown key(s) {unknown}; {fix}")
        rid, decision, note = obj.get("id"), obj.get("decision"), obj.get("note")
        if not isinstance(rid, str) or not rid:
            raise ReviewFileError(f"{path}:{lineno}: missing or empty 'id'; {fix}")
        if decision not in DECISIONS:
            raise ReviewFileError(f"{path}:{lineno}: 'decision' is {decision!r}, expected 'accept' or 'reject'")
        for key in _TEXT_KEYS:
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise ReviewFileError(f"{path}:{lineno}: {key!r} must be a string")
        if obj.get("gt_wrong") is not None and not isinstance(obj["gt_wrong"], bool):
            raise ReviewFileError(f"{path}:{lineno}: 'gt_wrong' must be true or false")
        out[rid] = Review(id=rid, decision=decision, note=note, **{k: obj.get(k) for k in KEYS[3:]})
    return out
