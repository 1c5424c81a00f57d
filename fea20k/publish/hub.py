"""Publish a release folder to the Hugging Face Hub: one commit with every file, then the tag ``round-N``.

The token is never read, stored or printed here: ``huggingface_hub`` resolves it itself from ``HF_TOKEN`` or the
user's saved login (``huggingface-cli login``). The ``HfApi`` is injected (``api_factory``) so tests use a recording
stand-in.

Order of calls: ``create_repo`` (dataset, private by option, exist_ok) -> ``list_repo_files`` (to delete shards of a
previous release that this one does not have: a stale ``data/train-00002-of-00003.parquet`` would otherwise be read
as part of the new release) -> ``create_commit`` (every file added, stale shards deleted, the release notes in the
description) -> ``list_repo_refs`` -> ``create_tag``. A failed commit leaves no tag and can be retried; a tag that
already exists (a re-published round) is moved to the new commit, with a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fea20k.errors import Fea20kUserError, PublishError
from fea20k.publish.notes import NOTES_FILE
from fea20k.publish.release import SPLIT_DIRS


logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
DESCRIPTION_MAX_LINES = 80  # commit descriptions stay readable; the full notes are in RELEASE_NOTES.md
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")  # Hub tokens, should an error message ever echo one


class HubPublishError(PublishError, Fea20kUserError):
    """Upload or tagging failed; nothing was tagged unless the message says so. Re-running retries."""


def redact(text: str) -> str:
    """Replace anything shaped like a Hub token (never read from the environment: matched by shape)."""
    return _TOKEN_RE.sub("hf_***", text)


@dataclass
class HubResult:
    """What was (or, for a dry run, would be) published."""

    repo_id: str
    tag: str
    files: list[tuple[str, int]]  # (path in repo, bytes)
    deleted: list[str] = field(default_factory=list)
    commit: str | None = None
    commit_message: str = ""
    commit_description: str = ""
    dry_run: bool = False


def release_files(folder: Path) -> list[tuple[str, Path]]:
    """Every file of a release folder, as (path in repo, local path), hidden files and temp files left out."""
    folder = Path(folder)
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append((rel.as_posix(), p))
    return out


def _description(folder: Path) -> str:
    notes = folder / NOTES_FILE
    if not notes.is_file():
        return ""
    lines = notes.read_text(encoding="utf-8").splitlines()
    if len(lines) > DESCRIPTION_MAX_LINES:
        lines = [*lines[:DESCRIPTION_MAX_LINES], f"… (full list in {NOTES_FILE})"]
    return "\n".join(lines)


def _api_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a Hub call raises for network or server problems (narrow: bugs still surface)."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError, TimeoutError]
    try:
        import httpx
    except ImportError:  # older huggingface_hub uses requests, whose errors are OSErrors
        pass
    else:
        errors.append(httpx.HTTPError)
    return tuple(errors)


def default_api_factory() -> Any:
    """A real ``HfApi`` with no token argument: huggingface_hub finds HF_TOKEN or the saved login itself."""
    from huggingface_hub import HfApi

    return HfApi()


def publish_to_hub(folder: Path, repo_id: str, round_: int, *, private: bool = True, dry_run: bool = False,
                   api_factory: Callable[[], Any] | None = None) -> HubResult:
    """Upload the release folder to ``repo_id`` in one commit and tag it ``round-N``.

    Raises:
        HubPublishError: the upload or the tagging failed (the message says which, and that a re-run retries).
    """
    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise Fea20kUserError(f"{folder}: no README.md; not a release folder (build it with `fea20k build`)")
    files = release_files(folder)
    tag = f"round-{round_}"
    message = f"Release {tag}"
    description = _description(folder)
    result = HubResult(repo_id=repo_id, tag=tag, files=[(p, lp.stat().st_size) for p, lp in files],
                       commit_message=message, commit_description=description, dry_run=dry_run)
    if dry_run:
        return result

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = (api_factory or default_api_factory)()
    errors = _api_errors()
    step = "create the repository"
    try:
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        step = "list the repository's files"
        existing = api.list_repo_files(repo_id, repo_type=REPO_TYPE)
        new = {p for p, _ in files}
        managed = tuple(f"{d}/" for d in sorted(set(SPLIT_DIRS.values())))
        result.deleted = sorted(f for f in existing if f.startswith(managed) and f not in new)
        ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(lp)) for p, lp in files]
        ops += [CommitOperationDelete(path_in_repo=f) for f in result.deleted]
        step = "upload the release (nothing was tagged; re-run to retry)"
        info = api.create_commit(repo_id, operations=ops, commit_message=message,
                                 commit_description=description or None, repo_type=REPO_TYPE)
        result.commit = getattr(info, "oid", None)
        step = f"tag commit {result.commit} as {tag} (the files are uploaded; re-run to retry the tag)"
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
        if any(t.name == tag for t in getattr(refs, "tags", [])):
            logger.warning("%s: tag %s exists; moving it to commit %s", repo_id, tag, result.commit)
            api.delete_tag(repo_id, tag=tag, repo_type=REPO_TYPE)
        api.create_tag(repo_id, tag=tag, revision=result.commit, tag_message=message, repo_type=REPO_TYPE)
    except errors as e:
        raise HubPublishError(f"{repo_id}: could not {step}: {type(e).__name__}: {redact(str(e))}") from None
    logger.info("published %s to %s (%d files, commit %s)", tag, repo_id, len(files), result.commit)
    return result
