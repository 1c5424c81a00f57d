"""materialize: faces of an annotations-only release rebuilt from the user's corpora through faces.align."""

from __future__ import annotations

from pathlib import Path

import datasets
from typer.testing import CliRunner

from fea20k.cli import app
from fea20k.publish.local import build_release
from fea20k.workspace import Workspace

from .conftest import jpeg, make_records, make_ws


def test_materialize_our_release(tmp_path: Path) -> None:
    root = make_ws(tmp_path, synthetic=False, images=True)
    rel = build_release(Workspace(root), 0).folder  # annotations-only: the sources are not synthetic
    corpus = tmp_path / "my_rafdb"
    released = [r for r in make_records() if r.accepted and r.source == "faces"]
    for i, rec in enumerate(released):
        if i == 0:
            continue  # this one is missing from the user's copy
        p = corpus / rec.image.path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg(i))
    out = tmp_path / "mat"
    r = CliRunner().invoke(app, ["materialize", str(rel), "--root", f"faces={corpus}", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "row(s) without an image" in r.output and released[0].id in r.output
    missing = dict(line.split("\t") for line in (out / "missing.tsv").read_text().splitlines())
    assert missing[released[0].id] == "image_missing"
    assert all(v == "no --root for source aus" for k, v in missing.items() if k.startswith("aus/"))
    ds = datasets.load_dataset(str(out))
    got = {row["id"]: row for split in ds for row in ds[split]}
    assert set(got) == {rec.id for rec in released[1:]}
    row = next(iter(got.values()))
    assert row["image"].size == (224, 224)
    assert any(p["stage"] == "faces.align" and p["value"] for p in row["provenance"])


def test_bad_root_spec(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["materialize", str(tmp_path), "--root", "nonsense"])
    assert r.exit_code != 0


def test_materialize_facial_r1_jsonl(ws_root: Path, tmp_path: Path) -> None:
    from fea20k.publish.export import export_round

    exp = export_round(Workspace(ws_root), 0, "facial-r1", tmp_path / "r1").folder
    first = sorted((exp / "images" / "faces").rglob("*.jpg"))[0]
    first.unlink()  # the user's copy lacks one image
    out = tmp_path / "mat"
    from fea20k.publish.materialize import materialize

    s = materialize(exp / "faces.jsonl", {"faces": exp / "images" / "faces"}, out)
    n_rows = len((exp / "faces.jsonl").read_text().splitlines())
    assert s.rows == {"train": n_rows - 1} and [r for _, r in s.missing] == ["image_missing"]
    ds = datasets.load_dataset(str(out))["train"]
    assert ds[0]["image"].size == (224, 224) and ds[0]["rationale"].startswith("<think>")


def test_cli_include_images_needs_confirmation(tmp_path: Path) -> None:
    root = make_ws(tmp_path, synthetic=False, images=False)
    r = CliRunner().invoke(app, ["publish", "--round", "0", "-w", str(root), "--include-images"])
    assert r.exit_code != 0 and "--i-have-redistribution-rights" in str(r.exception)
    r = CliRunner().invoke(app, ["publish", "--round", "0", "-w", str(root), "--include-images",
                                 "--i-have-redistribution-rights", "faces", "--i-have-redistribution-rights", "aus"])
    assert r.exit_code == 0, r.output
    assert "with faces" in r.output
