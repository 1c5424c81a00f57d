"""The audit's rejections as a CSV file (``fea20k audit --export``), one row per rejected record."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fea20k.audit.data import validate_details
from fea20k.record import FaceRecord


CSV_COLUMNS = ["id", "source", "split", "emotion", "emotion_origin", "aus", "au_coded", "excluded_at", "reasons",
               "hallucinated", "missed", "unverifiable", "au_f1", "emotion_match", "rationale", "review",
               "review_note"]


def _numbers(values: Iterable[int]) -> str:
    return " ".join(map(str, values))


def csv_row(rec: FaceRecord, review: Any = None) -> dict[str, Any]:
    """One rejected record (and its review, if any) as a CSV row keyed by :data:`CSV_COLUMNS`."""
    details = validate_details(rec)
    return {
        "id": rec.id, "source": rec.source, "split": rec.split, "emotion": rec.emotion,
        "emotion_origin": rec.emotion_origin, "aus": _numbers(rec.present_aus()),
        "au_coded": _numbers(sorted(rec.au_coded)), "excluded_at": rec.excluded_at,
        "reasons": ";".join(rec.reasons),
        "hallucinated": _numbers(details.get("hallucinated", [])),
        "missed": _numbers(details.get("missed", [])),
        "unverifiable": _numbers(details.get("unverifiable", [])),
        "au_f1": rec.scores.get("au_f1"), "emotion_match": rec.scores.get("emotion_match"),
        "rationale": rec.rationale.text if rec.rationale else None,
        "review": review.decision if review else None, "review_note": review.note if review else None,
    }


def export_csv(records: Iterable[FaceRecord], path: Path, reviews: dict[str, Any] | None) -> int:
    """Write rejections to a CSV file; returns the number of rows."""
    n = 0
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for rec in records:
            w.writerow(csv_row(rec, (reviews or {}).get(rec.id)))
            n += 1
    return n
