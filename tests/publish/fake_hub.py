"""FakeHubApi: a recording stand-in for huggingface_hub.HfApi (the Hub is unreachable in tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any


@dataclass
class FakeHubApi:
    """Records every call in order; keeps the repo's files, commits and tags; can fail the next commit(s).

    ``fail_commits``: how many upcoming ``create_commit`` calls raise ``OSError`` (a dropped connection).
    ``token_seen`` is filled with any ``token=`` argument passed explicitly (fea20k must never pass one).
    """

    fail_commits: int = 0
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    token_seen: list[Any] = field(default_factory=list)

    def _record(self, name: str, **kw: Any) -> None:
        if kw.get("token") is not None:
            self.token_seen.append(kw["token"])
        self.calls.append((name, kw))

    def create_repo(self, repo_id: str, *, repo_type: str | None = None, private: bool | None = None,
                    exist_ok: bool = False, token: Any = None) -> str:
        self._record("create_repo", repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=exist_ok,
                     token=token)
        if repo_id in self.repos and not exist_ok:
            raise OSError("409 repo exists")
        self.repos.setdefault(repo_id, {"private": private, "files": {".gitattributes": b""}})
        return f"https://huggingface.co/datasets/{repo_id}"

    def list_repo_files(self, repo_id: str, *, repo_type: str | None = None, token: Any = None) -> list[str]:
        self._record("list_repo_files", repo_id=repo_id, repo_type=repo_type, token=token)
        return sorted(self.repos[repo_id]["files"])

    def create_commit(self, repo_id: str, operations: Any, *, commit_message: str,
                      commit_description: str | None = None, repo_type: str | None = None, token: Any = None
                      ) -> Any:
        ops = list(operations)
        self._record("create_commit", repo_id=repo_id, n_ops=len(ops), repo_type=repo_type, token=token)
        if self.fail_commits:
            self.fail_commits -= 1
            raise OSError("connection reset by peer during upload")
        files = dict(self.repos[repo_id]["files"])
        added, deleted = [], []
        for op in ops:
            if type(op).__name__ == "CommitOperationAdd":
                data = op.path_or_fileobj
                files[op.path_in_repo] = Path(data).read_bytes() if isinstance(data, str) else data
                added.append(op.path_in_repo)
            else:
                files.pop(op.path_in_repo, None)
                deleted.append(op.path_in_repo)
        self.repos[repo_id]["files"] = files
        oid = f"{len(self.commits) + 1:040x}"
        self.commits.append({"oid": oid, "added": sorted(added), "deleted": sorted(deleted),
                             "message": commit_message, "description": commit_description or ""})
        return SimpleNamespace(oid=oid, commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/{oid}")

    def list_repo_refs(self, repo_id: str, *, repo_type: str | None = None, token: Any = None) -> Any:
        self._record("list_repo_refs", repo_id=repo_id, repo_type=repo_type, token=token)
        return SimpleNamespace(tags=[SimpleNamespace(name=t, target_commit=c) for t, c in self.tags.items()])

    def delete_tag(self, repo_id: str, *, tag: str, repo_type: str | None = None, token: Any = None) -> None:
        self._record("delete_tag", repo_id=repo_id, tag=tag, repo_type=repo_type, token=token)
        del self.tags[tag]

    def create_tag(self, repo_id: str, *, tag: str, revision: str | None = None, tag_message: str | None = None,
                   repo_type: str | None = None, token: Any = None) -> None:
        self._record("create_tag", repo_id=repo_id, tag=tag, revision=revision, repo_type=repo_type, token=token)
        if tag in self.tags:
            raise OSError("409 tag exists")
        self.tags[tag] = revision or self.commits[-1]["oid"]

    @property
    def call_names(self) -> list[str]:
        return [name for name, _ in self.calls]
