"""The Hub path against FakeHubApi: calls and their order, files per commit, tag, failure and retry, no token."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fea20k.cli import app
from fea20k.publish.hub import HubPublishError, publish_to_hub, redact
from fea20k.publish.local import build_release
from fea20k.workspace import Workspace

from .fake_hub import FakeHubApi


TOKEN = "hf_FakeSecretToken0123456789"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


def _all_text(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_one_commit_then_tag(ws_root: Path, token_env: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    folder = build_release(Workspace(ws_root), 0, shard_max_bytes=20_000).folder
    api = FakeHubApi()
    result = publish_to_hub(folder, "org/fea", 0, private=True, api_factory=lambda: api)
    assert api.call_names == ["create_repo", "list_repo_files", "create_commit", "list_repo_refs", "create_tag"]
    assert api.calls[0][1] == {"repo_id": "org/fea", "repo_type": "dataset", "private": True, "exist_ok": True,
                               "token": None}
    assert len(api.commits) == 1
    expected = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                      and not p.name.startswith("."))
    assert api.commits[0]["added"] == expected
    assert "README.md" in expected and "RELEASE_NOTES.md" in expected and ".fea20k-release.json" not in expected
    assert "first release" in api.commits[0]["description"]
    assert api.tags == {"round-0": api.commits[0]["oid"]} and result.commit == api.commits[0]["oid"]
    assert all(c[1]["repo_type"] == "dataset" for c in api.calls)
    assert api.token_seen == []
    assert TOKEN.encode() not in _all_text(folder) and TOKEN not in caplog.text


def test_failed_upload_leaves_no_tag_and_retry_works(ws_root: Path, token_env: str) -> None:
    folder = build_release(Workspace(ws_root), 0).folder
    api = FakeHubApi(fail_commits=1)
    with pytest.raises(HubPublishError, match="could not upload the release .nothing was tagged") as e:
        publish_to_hub(folder, "org/fea", 0, api_factory=lambda: api)
    assert TOKEN not in str(e.value)
    assert api.tags == {} and api.commits == [] and "create_tag" not in api.call_names
    publish_to_hub(folder, "org/fea", 0, api_factory=lambda: api)
    assert list(api.tags) == ["round-0"] and len(api.commits) == 1


def test_republish_removes_stale_shards_and_moves_tag(ws_root: Path) -> None:
    ws = Workspace(ws_root)
    folder = build_release(ws, 0, shard_max_bytes=20_000).folder
    api = FakeHubApi()
    publish_to_hub(folder, "org/fea", 0, api_factory=lambda: api)
    before = {f for f in api.repos["org/fea"]["files"] if f.startswith("data/train-")}
    assert len(before) >= 2
    build_release(ws, 0)  # one shard now
    publish_to_hub(folder, "org/fea", 0, api_factory=lambda: api)
    after = {f for f in api.repos["org/fea"]["files"] if f.startswith("data/train-")}
    assert after == {"data/train-00000-of-00001.parquet"}
    assert set(api.commits[1]["deleted"]) == before
    assert api.tags["round-0"] == api.commits[1]["oid"] and "delete_tag" in api.call_names


def test_dry_run_calls_nothing(ws_root: Path) -> None:
    folder = build_release(Workspace(ws_root), 0).folder
    result = publish_to_hub(folder, "org/fea", 0, dry_run=True, api_factory=lambda: pytest.fail("no API in dry run"))
    assert result.dry_run and ("README.md", (folder / "README.md").stat().st_size) in result.files


def test_cli_repo_and_dry_run(ws_root: Path, token_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeHubApi()
    monkeypatch.setattr("fea20k.cli.publish_cmds._hub_api_factory", lambda: (lambda: api))
    runner = CliRunner()
    r = runner.invoke(app, ["publish", "--round", "0", "-w", str(ws_root), "--repo", "org/fea", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would upload" in r.output and "README.md" in r.output and api.calls == []
    r = runner.invoke(app, ["publish", "--round", "0", "-w", str(ws_root), "--repo", "org/fea", "--public"])
    assert r.exit_code == 0, r.output
    assert "published round-0 to org/fea" in r.output and api.calls[0][1]["private"] is False
    assert TOKEN not in r.output
    assert Workspace(ws_root).ledger.releases(0) == [("org/fea", "round-0")]


def test_redact() -> None:
    assert redact(f"401 for token {TOKEN}") == "401 for token hf_***"
