"""The audit: counts by stage/reason/source, acceptance by class, coloured rationales, CLI, CSV and HTML."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fea20k.audit import (
    AuditData,
    Filters,
    acceptance_table,
    collect,
    iter_rejections,
    rationale_segments,
    rationale_text,
    rejection_table,
    render_html,
    sample_panel,
)
from fea20k.cli import app
from fea20k.engine import build_round
from fea20k.record import FaceRecord
from fea20k.workspace import Workspace
from tests.validate.toy_round import make_round_ws


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_round_ws(tmp_path_factory.mktemp("audit"))
    build_round(root, 0)
    (root / "reviews").mkdir()
    (root / "reviews" / "round-0.jsonl").write_text('{"id": "toy/0005", "decision": "accept", "note": "faint AU12"}\n')
    return root


def _text(renderable: object, width: int = 160) -> str:
    con = Console(record=True, width=width)
    con.print(renderable)
    return con.export_text()


def test_collect_counts(ws: Path) -> None:
    data = collect(Workspace(ws), 0)
    assert data.stages == ["ingest/toy", "validate"] and data.pool_stage == "validate"
    assert data.rejections == {
        ("validate", "template_collapse", "toy"): 25, ("ingest.validate_toy", "label_parse_error", "toy"): 1,
        ("validate", "au_f1_below_0.6", "toy"): 1, ("validate", "emotion_mismatch", "toy"): 1,
        ("validate", "hedging", "toy"): 1, ("validate", "no_rationale", "toy"): 1,
    }
    assert data.n_pool == 34 and data.n_accepted == 4
    rows = {e: (n, a, flagged) for e, n, a, _, flagged in data.acceptance(0.5)}
    # rates: (none) 2/3, anger 0, fear 0, happiness 1/26, sadness 1/2; mean 0.241 -> flag below 0.120
    assert rows == {"(none)": (3, 2, False), "anger": (1, 0, True), "fear": (1, 0, True),
                    "happiness": (26, 1, True), "sadness": (2, 1, False)}
    assert data.reviews is not None and data.reviews["toy/0005"].decision == "accept"


def test_tables_render(ws: Path) -> None:
    data = collect(Workspace(ws), 0)
    rej = _text(rejection_table(data))
    assert "template_collapse" in rej and "ingest.validate_toy" in rej and "label_parse_error" in rej
    lines = [ln for ln in rej.splitlines() if "template_collapse" in ln]
    assert lines and lines[0].split("│")[-2].strip() == "25"
    acc = _text(acceptance_table(data))
    assert "happiness" in acc and "far below the mean" in acc and "3.8%" in acc
    empty = _text(rejection_table(AuditData(round=1, stages=[], pool_stage=None)))
    assert "no rejections" in empty


def test_rationale_colouring() -> None:
    rec = FaceRecord(id="x", source="s", aus={4: 1, 12: 0, 15: 1, 2: None}, au_coded=[2, 4, 12, 15],
                     emotion="sadness", emotion_origin="gt")
    text = "<think>brows (AU4), corners (AU12), (AU2), cheek (AU6)</think>\n<answer>anger</answer>"
    kinds = [(s, k) for s, k in rationale_segments(text, rec) if k]
    assert kinds == [("AU4", "match"), ("AU12", "hallucinated"), ("AU2", "unverifiable"), ("AU6", "unverifiable"),
                     ("anger", "answer_bad")]
    assert "".join(s for s, _ in rationale_segments(text, rec)) == text
    styled = {text[s.start:s.end]: str(s.style) for s in rationale_text(text, rec).spans}
    assert styled == {"AU4": "bold green", "AU12": "bold red", "AU2": "yellow", "AU6": "yellow", "anger": "bold red"}
    assert "answer_ok" in {k for _, k in rationale_segments(text.replace("anger", "Sad"), rec)}


def test_sample_panel_and_filters(ws: Path) -> None:
    w = Workspace(ws)
    data = collect(w, 0)
    recs = list(iter_rejections(w, data, Filters(reason="au_f1_below_0.6"), 10))
    assert [r.id for r in recs] == ["toy/0005"]
    out = _text(sample_panel(recs[0], data.reviews["toy/0005"]))
    assert "au_f1_below_0.6" in out and "hallucinated AU6 AU12" in out and "missed AU15" in out
    assert "review: accept — faint AU12" in out and "AUs: AU4 AU15" in out
    assert [r.id for r in iter_rejections(w, data, Filters(emotion="anger"), 10)] == ["toy/0004"]
    assert len(list(iter_rejections(w, data, Filters(source="toy"), 3))) == 3
    assert list(iter_rejections(w, data, Filters(source="nope"), 3)) == []
    assert [r.id for r in iter_rejections(w, data, Filters(reason="label_parse_error"), None)] == ["toy/0008"]


def test_cli_audit_export(ws: Path, tmp_path: Path) -> None:
    out_csv = tmp_path / "rej.csv"
    res = CliRunner().invoke(app, ["audit", "--round", "0", "-w", str(ws), "--reason", "hedging", "--limit", "5",
                                   "--export", str(out_csv)])
    assert res.exit_code == 0, res.output
    assert "toy/0006" in res.output and "toy/0005" not in res.output
    assert "rejections by reason × source" in res.output
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["id"] for r in rows] == ["toy/0006"] and rows[0]["reasons"] == "hedging"
    res = CliRunner().invoke(app, ["audit", "--round", "3", "-w", str(ws)])
    assert res.exit_code != 0


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_audit_renders_thumbnails_in_chromium(ws: Path, tmp_path: Path) -> None:
    page = tmp_path / "audit.html"
    res = CliRunner().invoke(app, ["audit", "--round", "0", "-w", str(ws), "--limit", "0", "--html", str(page)])
    assert res.exit_code == 0, res.output
    html = page.read_text()
    assert html.count('class="thumb" src="data:image/jpeg;base64,') == 30  # every rejection with a face
    assert 'class="hallucinated">AU12<' in html and "far below the mean" in html
    assert "review: <b>accept</b>" in html
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is required in CI for the HTML audit test (apt-get install -y chromium)")
        pytest.skip("chromium not installed (Debian: apt-get update && apt-get install -y chromium); CI installs it")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
         page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 900)
    # the toy faces are skin-coloured ovals (230, 190, 160) on a coloured square: find them in the screenshot
    px = img.load()
    skin = [(x, y) for y in range(0, 900, 2) for x in range(0, 400, 2)
            if abs(px[x, y][0] - 230) < 25 and abs(px[x, y][1] - 190) < 25 and abs(px[x, y][2] - 160) < 25]
    assert len(skin) > 500, "no rendered face thumbnail found in the screenshot"
    xs, ys = [p[0] for p in skin], [p[1] for p in skin]
    from PIL import ImageStat

    box = img.crop((min(xs), min(ys), max(xs) + 1, max(ys) + 1)).convert("L")
    variance = ImageStat.Stat(box).var[0]
    assert variance > 100, f"thumbnail region looks blank (pixel variance {variance:.1f})"


def test_render_html_without_rejections(ws: Path) -> None:
    data = collect(Workspace(ws), 0)
    page = render_html(data, [], Filters(reason="nope"))
    assert "No rejection matches the filters" in page and "reason=nope" in page


def test_html_audit_shows_the_repair_loop(ws: Path) -> None:
    from collections import Counter

    from fea20k.audit import RepairData

    data = collect(Workspace(ws), 0)
    assert "The repair loop" not in render_html(data, [], Filters())  # rule-written drafts: nothing to repair
    data.repairs["annotate.draft"] = RepairData(
        drafted=5, first_try=2, repaired=2, failed=1,
        reasons=Counter({("hedging", "rafdb"): 2, ("emotion_mismatch", "rafdb"): 1, ("hedging", "disfa"): 1}))
    page = render_html(data, [], Filters())
    section = page.split("<h2>The repair loop</h2>", 1)[1].split("<h2>", 1)[0]
    assert "annotate.draft: rejected attempts by reason × source" in section
    assert "5 drafted: 2 right first time, 2 repaired, 1 failed after every attempt" in section
    # hedging (3 attempts) before emotion_mismatch (1), counted per source
    assert section.index("hedging") < section.index("emotion_mismatch") and "<b>3</b>" in section


def test_html_escapes_every_value() -> None:
    from collections import Counter

    from fea20k.audit import RepairData
    from fea20k.publish.reviews import Review
    from fea20k.record import Rationale

    hostile = '<script>alert("x")</script>'
    rec = FaceRecord(id=f"src/{hostile}", source="s<i>", split="train&", emotion="sadness", emotion_origin="gt",
                     aus={4: 1}, au_coded=[4],
                     reasons=[f"r{hostile}"], excluded_at="validate",
                     rationale=Rationale(text=f"<think>{hostile} (AU4)</think>\n<answer>sadness</answer>",
                                         annotator="a", backend="rules"),
                     meta={"validate": {"hallucinated": [4]}})
    review = Review(id=rec.id, decision="reject", note=hostile)
    repair = RepairData(drafted=1, failed=1, reasons=Counter({(hostile, "s<i>"): 1}))
    data = AuditData(round=0, stages=["validate"], pool_stage="validate",
                     rejections=Counter({("validate", f"r{hostile}", "s<i>"): 1}),
                     checked_by_emotion=Counter({hostile: 1}), reviews={rec.id: review},
                     repairs={f"annotate.{hostile}": repair})
    page = render_html(data, [rec], Filters(reason=hostile))
    assert "<script>" not in page and "<i>" not in page
    assert page.count("&lt;script&gt;") >= 8  # id, reason (table + card), rationale, review, filter, repair, emotion
    assert 'class="match">AU4</span>' in page and "<think>" not in page and "&lt;think&gt;" in page
