"""Per-stage statistics as addable data (docs/style.md P9)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageStats:
    """Counts for one stage (or one chunk of it): records in, out, kept, excluded by reason, time, counters."""

    n_in: int = 0
    n_out: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    counters: Counter[str] = field(default_factory=Counter)  # stage-specific: tokens_in, cost_usd, cache_hits, ...

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` records excluded for ``reason``."""
        self.dropped[reason] += n

    def add(self, name: str, value: float = 1) -> None:
        """Add to a stage-specific counter."""
        self.counters[name] += value

    def __add__(self, other: StageStats) -> StageStats:
        return StageStats(
            n_in=self.n_in + other.n_in,
            n_out=self.n_out + other.n_out,
            kept=self.kept + other.kept,
            dropped=self.dropped + other.dropped,
            seconds=self.seconds + other.seconds,
            counters=_add_counters(self.counters, other.counters),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "in": self.n_in,
            "out": self.n_out,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "seconds": round(self.seconds, 4),
            "counters": {k: self.counters[k] for k in sorted(self.counters)},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageStats:
        return cls(
            n_in=d.get("in", 0),
            n_out=d.get("out", 0),
            kept=d.get("kept", 0),
            dropped=Counter(d.get("dropped", {})),
            seconds=d.get("seconds", 0.0),
            counters=Counter(d.get("counters", {})),
        )


def _add_counters(a: Counter[str], b: Counter[str]) -> Counter[str]:
    # Counter's + drops non-positive results; stage counters may legitimately be negative (e.g. score sums)
    out: Counter[str] = Counter(dict(a))
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out
