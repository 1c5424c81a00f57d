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
