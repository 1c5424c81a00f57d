"""Exception hierarchy. User-caused errors derive from :class:`Fea20kUserError` and make the CLI exit 2."""

from __future__ import annotations


class Fea20kError(Exception):
    """Base class of every error fea20k raises on purpose."""


class Fea20kUserError(Fea20kError):
    """An error the user can fix (bad path, bad config, unknown name). The CLI prints it as one line, exit 2."""


class ConfigError(Fea20kUserError, ValueError):
    """A configuration file is missing, malformed or has an unknown key / out-of-range value."""


class SourceLayoutError(Fea20kUserError):
    """A corpus root is missing or is not in the release layout its adapter expects."""


class UnknownStageError(Fea20kUserError, KeyError):
    """A stage, adapter, backend or check name that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(Fea20kUserError, ImportError):
    """An optional dependency (extra) is not installed."""


class StageError(Fea20kError):
    """A stage failed for a reason that is not a single bad row."""


class BudgetExceededError(Fea20kError):
    """The annotator's budget cap was reached; the stage stops cleanly and can be resumed with a higher cap."""


class PendingError(Fea20kError):
    """Records a stage could not process for a transient reason (an endpoint down longer than the retry budget):
    they are pending, not outcomes. The stage finishes what it can and has no completion marker; the CLI prints this
    one line and exits 4; the next build retries only the pending records.

    ``count``: pending records; ``since``: wall-clock time the failures began (None when unknown); ``cause``: the
    last failure as text; ``what``: what could not be done to them ("annotated"); ``reason``: why, in words
    ("endpoint unreachable"); ``round_``: the round to re-run."""

    def __init__(self, count: int, since: float | None = None, cause: str = "", what: str = "processed",
                 reason: str = "a transient failure", round_: int | None = None) -> None:
        self.count, self.since, self.cause, self.what, self.reason, self.round = (
            count, since, cause, what, reason, round_)
        super().__init__(self.message())

    def message(self) -> str:
        import time

        when = f" since {time.strftime('%H:%M', time.localtime(self.since))}" if self.since is not None else ""
        cause = f" ({self.cause})" if self.cause else ""
        rerun = f"fea20k build --round {self.round}" if self.round is not None else "fea20k build"
        noun = "sample" if self.count == 1 else "samples"
        return (f"{self.count} {noun} could not be {self.what}: {self.reason}{when}{cause}; re-run `{rerun}` to "
                f"retry {'it' if self.count == 1 else 'them'}")

    def to_dict(self) -> dict[str, object]:
        return {"count": self.count, "since": self.since, "cause": self.cause, "what": self.what,
                "reason": self.reason, "round": self.round}

    @classmethod
    def merged(cls, parts: list[dict[str, object]], round_: int | None = None) -> PendingError:
        """One error for the pending records of several chunks (:meth:`to_dict` of each): their sum, the earliest
        start and the latest cause."""
        sinces = [p["since"] for p in parts if p.get("since") is not None]
        causes = [str(p["cause"]) for p in parts if p.get("cause")]
        first = parts[0] if parts else {}
        return cls(sum(int(p["count"]) for p in parts), min(sinces) if sinces else None,  # type: ignore[arg-type]
                   causes[-1] if causes else "", str(first.get("what", "processed")),
                   str(first.get("reason", "a transient failure")), round_)

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # keyword fields survive pickling (client processes)
        return type(self), (self.count, self.since, self.cause, self.what, self.reason, self.round)


class BatchPendingError(Fea20kError):
    """An annotate stage in batch mode (``mode = "batch"``) waits for a Batch API batch it submitted (or found still
    running). Not a failure: the CLI prints this one line and exits 6; the next build polls the batch, collects its
    answers into the request cache and goes on."""


class BatchExportedError(Fea20kError):
    """``fea20k batch export`` stopped the build at the exported stage after writing its pending requests (the CLI
    reports the file and exits 0)."""

    def __init__(self, message: str, count: int = 0) -> None:
        super().__init__(message)
        self.count = count


class ReviewPendingError(Fea20kError):
    """A ``review.gate`` step is waiting for a curator: too few of its sampled rows have a decision in
    ``reviews/round-N.jsonl``. Not a failure: the CLI prints this one line and exits 5; once the decisions are
    written the next build goes on from the gate."""


class DiskFullError(Fea20kError):
    """A write found its disk full; the message names the path, the free space and the space needed (exit 1). What
    was written before is intact (writes are atomic), so a re-run after freeing space resumes."""

    def __init__(self, message: str, path: object = None, needed: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.needed = needed

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Interrupted(Fea20kError):
    """The user pressed Ctrl-C; the message says what was kept and how to resume (the CLI exits 130)."""


class PublishError(Fea20kError):
    """Publishing a release failed."""


def require(module: str, extra: str) -> None:
    """Fail early with an install hint when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"{module} is not installed; install it with: pip install 'fea20k[{extra}]'")
