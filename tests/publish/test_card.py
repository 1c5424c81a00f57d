"""The dataset card: sections, facts, licences, and nothing private."""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path

import pytest

from fea20k.errors import ConfigError
from fea20k.publish.card import load_sources_file
from fea20k.publish.local import build_release
from fea20k.workspace import Workspace

from .conftest import make_ws


SECTIONS = ["## Dataset Details", "## Uses", "## Dataset Structure", "## Dataset Creation", "### Source Data",
            "### Annotations", "#### Personal and Sensitive Information", "## Bias, Risks, and Limitations",
            "## Citation"]


def test_card_facts_and_sections(tmp_path: Path) -> None:
    root = make_ws(tmp_path, synthetic=False, images=False)
    card = (build_release(Workspace(root), 0).folder / "README.md").read_text()
    for section in SECTIONS:
        assert section in card
    assert card.startswith("---\n") and "config_name: rejected" in card and "class_label" in card
    assert "| faces | train | anger | 3 |" in card
    assert "| aus | test | (none) | 2 |" in card
    assert "| AU1 | Inner brow raiser | train | 6 | 6 | 1.0000 |" in card
    assert "| 0 | 32 | 28 | 87.5% |" in card  # acceptance of round 0
    assert "| contempt | 3 | 2 | 66.7% |" in card
    assert "| faces | au_mismatch | 4 |" in card and "| faces | image_undecodable | 1 |" in card
    assert "| rules | rules | – | 28 |" in card
    assert "RAF-DB (basic)" in card and "No redistribution" in card and "@inproceedings{li2017reliable" in card
    assert "@article{mavadati2013disfa" in card
    assert "annotations-only release" in card
    assert "recipe sha256 `" in card


def test_card_has_no_local_paths_keys_or_usernames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_SecretTokenValue123456")
    root = make_ws(tmp_path)
    folder = build_release(Workspace(root), 0).folder
    card = (folder / "README.md").read_text()
    notes = (folder / "RELEASE_NOTES.md").read_text()
    for text in (card, notes):
        assert str(root) not in text and str(tmp_path) not in text
        assert os.path.expanduser("~") not in text
        assert "hf_SecretTokenValue" not in text
        user = getpass.getuser()
        assert f"/{user}/" not in text and f"{user}@" not in text
        if user not in ("root", "user", "runner"):  # generic account names are ordinary words on a card
            assert re.search(rf"\b{re.escape(user)}\b", text) is None
    assert "synthetic drawings" in card and "rafdb_basic release layout" in card


def test_sources_file_is_validated(tmp_path: Path) -> None:
    p = tmp_path / "sources.toml"
    p.write_text('[sources.x]\nname = "X"\nlicence = "l"\nredistribute = true\n')
    with pytest.raises(ConfigError, match="unknown key 'sources.x.redistribute'"):
        load_sources_file(p)


def test_shipped_sources_cover_the_adapters(repo_root: Path) -> None:
    """An entry is looked up by the adapter a source names in fea20k.toml: every registered adapter has one, and
    every other key (but ``synthetic``) would never be read."""
    from fea20k.ingest.report import list_adapters

    terms = load_sources_file(repo_root / "cards" / "sources.toml")
    adapters = {a.name for a in list_adapters()}
    assert {"fer2013_csv", "fer2013_folder", "rafdb_basic", "disfa", "bp4dplus", "faba"} <= adapters
    assert set(terms.sources) == adapters | {"synthetic"}
    assert terms.sources["synthetic"].redistribute_images
    assert not any(t.redistribute_images for k, t in terms.sources.items() if k != "synthetic")
