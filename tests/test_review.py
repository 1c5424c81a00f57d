"""``fea20k review``: the loopback review page, its token, decisions under the lock, and a real browser session."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fea20k.engine import build_round
from fea20k.publish.reviews import load_reviews
from fea20k.review import HOST, TOKEN_HEADER, ReviewError, ReviewSession, make_server, server_url
from tests.validate.toy_round import make_round_ws


REVIEWER = "tester"
# toy rows (tests/validate/toy_round.py): 0000-0003 accepted; 0004 answers fear for an anger face; 0006 hedges
ANGER_FIXED = ("<think>The face shows a clear expression with several visible facial movements: brows lowered "
               "(AU4), lids tight (AU7).</think>\n<answer>anger</answer>")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = make_round_ws(tmp_path, n_template=3)
    recipe = root / "pipelines" / "toy.toml"
    recipe.write_text(recipe.read_text().replace('steps = ["ingest", "validate"]',
                                                 'steps = ["ingest", "validate", "publish"]'))
    build_round(root, 0)
    return root


@pytest.fixture
def served(ws: Path) -> Iterator[tuple[ReviewSession, str]]:
    session = ReviewSession.open(ws, 0, REVIEWER, sample_rate=1.0, seed=0)
    server = make_server(session)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield session, server_url(server, session)
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_binds_loopback_only_and_refuses_without_token(served: tuple[ReviewSession, str], ws: Path) -> None:
    session, url = served
    base = url.split("?", 1)[0]
    assert url.startswith(f"http://{HOST}:") and HOST == "127.0.0.1"
    port = int(base.rsplit(":", 1)[1].rstrip("/"))
    # every interface address other than loopback must not answer
    others = {ip for *_, (ip, *_) in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {HOST}
    for ip in others:
        if ip.startswith("127."):
            continue
        with pytest.raises(OSError), socket.create_connection((ip, port), timeout=2):
            pass
    decide = json.dumps({"id": "toy/0000", "action": "accept"}).encode()
    for path, data in (("", None), ("api/rows", None), ("face?id=toy%2F0000", None), ("api/decide", decide)):
        assert _get(base + path, data=data)[0] == 403, path
        assert _get(f"{base}{path}{'&' if '?' in path else '?'}token=wrong", data=data)[0] == 403, path
        assert _get(base + path, headers={TOKEN_HEADER: session.token[:-1]}, data=data)[0] == 403, path
    assert not (ws / "reviews" / "round-0.jsonl").exists()
    status, body = _get(url)
    assert status == 200 and b"Keys:" in body and b"fea20k review" in body
    status, body = _get(base + "api/rows", headers={TOKEN_HEADER: session.token})
    rows = json.loads(body)["rows"]
    kinds = {r["id"]: r["kind"] for r in rows}
    assert kinds["toy/0004"] == "rejected" and kinds["toy/0000"] == "sample"  # sample rate 1: every accepted row
    status, body = _get(f"{base}face?id=toy%2F0004&token={session.token}")
    assert status == 200 and body[:2] == b"\xff\xd8"  # the aligned face, as JPEG


def test_check_decide_and_two_tabs(served: tuple[ReviewSession, str], ws: Path) -> None:
    session, url = served
    base, token = url.split("?", 1)[0], session.token
    rat = session.rows["toy/0004"].rationale
    assert rat is not None
    rat.raw, rat.errors, rat.attempts = ["<answer>fear</answer>", rat.text or ""], ["no_think_tag"], 2
    card = session.row_json(session.rows["toy/0004"])
    assert card["attempts"] == [{"n": 1, "text": "<answer>fear</answer>", "error": "no_think_tag"},
                                {"n": 2, "text": rat.text, "error": None}]
    assert card["reasons"] == ["emotion_mismatch"] and ("fear", "answer_bad") in card["segments"]
    failed = copy.deepcopy(session.rows["toy/0004"])  # every attempt failed: no rationale kept, the replies are
    assert failed.rationale is not None
    failed.rationale.text = None
    card = session.row_json(failed)
    assert card["rationale"] is None and card["last_reply"] == rat.text
    assert ("fear", "answer_bad") in card["last_segments"]
    ok = session.check("toy/0004", ANGER_FIXED)
    assert ok["passed"] and ok["reasons"] == [] and ("anger", "answer_ok") in ok["segments"]
    bad = session.check("toy/0004", ANGER_FIXED.replace("anger", "fear").replace("lids", "maybe lids"))
    assert not bad["passed"] and {"emotion_mismatch", "hedging"} <= set(bad["reasons"])
    with pytest.raises(ReviewError, match="fails the checks: emotion_mismatch"):
        session.decide("toy/0004", "edit", rationale=ANGER_FIXED.replace("anger", "fear"))
    with pytest.raises(ReviewError, match="needs a reason code"):
        session.decide("toy/0004", "reject")
    with pytest.raises(ReviewError, match="not a row of round 0"):
        session.decide("nope/1", "accept")

    # two tabs deciding at once: every line lands, none is lost or interleaved
    ids = sorted(session.rows)
    errors: list[Any] = []

    def tab(n: int) -> None:
        for rid in ids:
            body = json.dumps({"id": rid, "action": "accept", "note": f"tab {n}"}).encode()
            status, out = _get(base + "api/decide", headers={TOKEN_HEADER: token, "Content-Type": "application/json"},
                               data=body)
            if status != 200:
                errors.append((status, out))

    tabs = [threading.Thread(target=tab, args=(n,)) for n in (1, 2)]
    for t in tabs:
        t.start()
    for t in tabs:
        t.join()
    assert errors == []
    lines = [json.loads(ln) for ln in (ws / "reviews" / "round-0.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * len(ids)
    assert {(ln["id"], ln["note"]) for ln in lines} == {(i, f"tab {n}") for i in ids for n in (1, 2)}
    assert all(ln["reviewer"] == REVIEWER and len(ln["signature"]) == 16 and ln["time"].endswith("Z") for ln in lines)
    assert set(load_reviews(ws, 0)) == set(ids)
    status, out = _get(base + "api/decide", headers={TOKEN_HEADER: token},
                       data=json.dumps({"id": "toy/0004", "action": "edit", "rationale": "maybe"}).encode())
    assert status == 422 and "fails the checks" in json.loads(out)["error"]

    # a build holding the workspace lock: the decision is refused with who holds it (409), nothing is written
    from fea20k.lock import workspace_lock

    before = (ws / "reviews" / "round-0.jsonl").read_bytes()
    with workspace_lock(ws, "fea20k build --round 0"):
        status, out = _get(base + "api/decide", headers={TOKEN_HEADER: token},
                           data=json.dumps({"id": "toy/0004", "action": "accept"}).encode())
    assert status == 409 and "is locked by" in json.loads(out)["error"] and "fea20k build" in json.loads(out)["error"]
    assert (ws / "reviews" / "round-0.jsonl").read_bytes() == before


def test_review_lines_keep_their_new_keys(tmp_path: Path) -> None:
    from fea20k.publish.reviews import ReviewFileError

    path = tmp_path / "reviews" / "round-0.jsonl"
    path.parent.mkdir()
    path.write_text('{"id": "a/1", "decision": "accept"}\n'
                    '{"id": "a/2", "decision": "reject", "reason": "gt_wrong", "gt_wrong": true, "reviewer": "r", '
                    '"time": "2026-01-01T00:00:00Z", "signature": "0123456789abcdef"}\n')
    got = load_reviews(tmp_path, 0)
    assert got["a/1"].reviewer is None and got["a/2"].gt_wrong is True and got["a/2"].reason == "gt_wrong"
    path.write_text('{"id": "a/1", "decision": "reject", "gt_wrong": "yes"}\n')
    with pytest.raises(ReviewFileError, match=r"round-0.jsonl:1: 'gt_wrong' must be true or false"):
        load_reviews(tmp_path, 0)


SADNESS_FIXED = ("<think>The face shows a clear expression with several visible facial movements: brows raised "
                 "inside (AU1), lowered (AU4), corners down (AU15).</think>\n<answer>sadness</answer>")


def test_publish_sees_decisions_made_on_an_earlier_version_of_a_row(ws: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A decision's signature is the row as the reviewer saw it. When a rebuild has changed the row since, publish
    counts and names the decision: a stale edit is not applied (the row's new text stands), a stale reject still
    keeps the row out; a decision on an unchanged row applies as before."""
    import logging

    import pyarrow.parquet as pq

    from fea20k.publish.local import build_release
    from fea20k.publish.reviews import row_signature
    from fea20k.workspace import Workspace

    session = ReviewSession.open(ws, 0, REVIEWER, sample_rate=1.0, seed=0)
    session.decide("toy/0004", "edit", rationale=ANGER_FIXED)  # made on the row as it is: applies
    # what the reviewer saw of 0006 and 0000 before a rebuild re-drafted them
    earlier = {}
    for rid, text in (("toy/0006", "<think>maybe sad (AU1).</think>\n<answer>sadness</answer>"),
                      ("toy/0000", "<think>brows (AU4).</think>\n<answer>sadness</answer>")):
        seen = copy.deepcopy(session.rows[rid])
        assert seen.rationale is not None
        seen.rationale.text = text
        earlier[rid] = row_signature(seen)
    (ws / "reviews" / "round-0.jsonl").open("a").write(
        json.dumps({"id": "toy/0006", "decision": "accept", "reviewer": REVIEWER, "rationale": SADNESS_FIXED,
                    "signature": earlier["toy/0006"]}) + "\n"
        + json.dumps({"id": "toy/0000", "decision": "reject", "reason": "bad_face", "reviewer": REVIEWER,
                      "signature": earlier["toy/0000"]}) + "\n")
    original_0006 = session.rows["toy/0006"].rationale.text  # type: ignore[union-attr]

    with caplog.at_level(logging.WARNING, logger="fea20k"):
        folder = build_release(Workspace(ws), 0).folder
    rejected = {r["id"]: r for r in pq.read_table(folder / "rejected").to_pylist()}
    assert rejected["toy/0004"]["rationale"] == ANGER_FIXED  # the fresh edit
    assert rejected["toy/0006"]["rationale"] == original_0006  # the stale edit is not applied
    assert not any(p["stage"] == "review" for p in rejected["toy/0006"]["provenance"])
    assert rejected["toy/0000"]["reasons"] == ["human_reject"]  # the stale reject still keeps the row out
    card = (folder / "README.md").read_text()
    for count in ("made on an earlier version of the row 2", "rationale edit not applied (row changed since) 1",
                  "rationale edited 1"):
        assert count in card, count
    warned = [r.getMessage() for r in caplog.records if "earlier version" in r.getMessage()]
    assert len(warned) == 1 and "'toy/0006'" in warned[0] and "'toy/0000'" in warned[0]
    assert "fea20k review --round 0 -w " in warned[0]


def test_the_training_export_takes_the_edited_rationale_the_release_carries(ws: Path, tmp_path: Path) -> None:
    """An accepted row's rationale edited in review is what the release carries and what the model trains on; a
    stale edit is neither."""
    import pyarrow.parquet as pq

    from fea20k.publish.export import export_round
    from fea20k.publish.local import build_release
    from fea20k.publish.reviews import row_signature
    from fea20k.workspace import Workspace

    session = ReviewSession.open(ws, 0, REVIEWER, sample_rate=1.0, seed=0)
    edited = ("<think>The face shows a clear expression with several visible facial movements: corners down "
              "(AU15), brows raised inside (AU1), lowered (AU4).</think>\n<answer>sadness</answer>")
    assert session.decide("toy/0000", "edit", rationale=edited)["decision"] == "accept"
    seen = copy.deepcopy(session.rows["toy/0001"])  # the row as a reviewer saw it before a rebuild re-drafted it
    assert seen.rationale is not None
    seen.rationale.text = "<think>cheeks (AU6).</think>\n<answer>happiness</answer>"
    (ws / "reviews" / "round-0.jsonl").open("a").write(json.dumps(
        {"id": "toy/0001", "decision": "accept", "rationale": edited, "signature": row_signature(seen)}) + "\n")
    drafted = {i: session.rows[i].rationale.text for i in ("toy/0000", "toy/0001")}  # type: ignore[union-attr]

    folder = build_release(Workspace(ws), 0).folder
    released = {r["id"]: r["rationale"] for r in pq.read_table(folder / "data").to_pylist()}
    summary = export_round(Workspace(ws), 0, "messages", tmp_path / "export")
    trained = {json.loads(line)["id"]: json.loads(line)["messages"][1]["content"]
               for line in (tmp_path / "export" / "messages.jsonl").read_text().splitlines()}
    assert released["toy/0000"] == trained["toy/0000"] == edited != drafted["toy/0000"]
    assert released["toy/0001"] == trained["toy/0001"] == drafted["toy/0001"]  # the stale edit: neither
    assert summary.reviewer_edits == 1


def test_cli_prints_the_url_and_serves_it(ws: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "fea20k", "review", "--round", "0", "-w", str(ws), "--reviewer",
                             "cli", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            if line.startswith("open http://127.0.0.1:"):
                url = line.split()[1]
                break
        assert url is not None and "?token=" in url, "fea20k review printed no URL"
        assert _get(url)[0] == 200 and _get(url.split("?", 1)[0])[0] == 403
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------- real browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class _Cdp:
    """A minimal DevTools-protocol client over aiohttp's websocket: send a command, await its reply."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.n = 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        my_id = self.n
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = json.loads((await self.ws.receive(timeout=20)).data)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expr: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def until(self, expr: str, timeout: float = 10.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = await self.js(expr)
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr}; status: {await self.js(_STATUS)}")

    async def key(self, key: str, code: str, vk: int, text: str | None = None, modifiers: int = 0) -> None:
        down = {"type": "keyDown" if text else "rawKeyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk,
                "modifiers": modifiers}
        if text:
            down["text"] = text
        await self.send("Input.dispatchKeyEvent", **down)
        await self.send("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=vk,
                        modifiers=modifiers)

    async def letter(self, ch: str) -> None:
        await self.key(ch, f"Key{ch.upper()}", ord(ch.upper()), text=ch)

    async def select(self, rid: str) -> None:
        await self.js(f"document.querySelector('nav .item[data-id=\"{rid}\"]').click()")
        await self.until(f"document.getElementById('card').dataset.id === '{rid}'")


_STATUS = "document.getElementById('status').textContent"


def _decision(rid: str) -> str:
    return f"document.querySelector('nav .item[data-id=\"{rid}\"]').dataset.decision"


async def _drive(exe: str, url: str, tmp: Path) -> Path:
    import aiohttp

    profile = tmp / "profile"
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         "--window-size=1280,800", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < end, "chromium did not open its DevTools port"
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        async with aiohttp.ClientSession() as http:
            async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as r:
                target = await r.json()
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as sock:
                cdp = _Cdp(sock)
                await cdp.send("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1,
                               mobile=False)
                await cdp.send("Page.enable")
                await cdp.send("Page.navigate", url=url)
                await cdp.until("document.body && document.body.dataset.ready === '1'")

                # accept a row the checks rejected (the curator finds the hedge harmless): key a
                await cdp.select("toy/0006")
                await cdp.letter("a")
                await cdp.until(f"{_STATUS}.includes('saved: toy/0006')")
                # reject an accepted row with a reason: key r focuses the reason list, Enter saves
                await cdp.select("toy/0001")
                await cdp.js("document.getElementById('note').value = 'eyes closed'")
                await cdp.letter("r")
                await cdp.until("document.activeElement.id === 'reason'")
                await cdp.js("document.getElementById('reason').value = 'bad_face'")
                await cdp.key("Enter", "Enter", 13, text="\r")
                await cdp.until(f"{_STATUS}.includes('saved: toy/0001')")
                # flag the ground truth of another accepted row: key g
                await cdp.select("toy/0002")
                await cdp.letter("g")
                await cdp.until(f"{_STATUS}.includes('saved: toy/0002')")
                # edit a wrong answer into a valid rationale: key e, type it, checks go green, Ctrl+Enter saves
                await cdp.select("toy/0004")
                await cdp.letter("e")
                await cdp.until("document.activeElement.id === 'edit-text'")
                await cdp.until("document.getElementById('checks').textContent.includes('fails: emotion_mismatch')")
                await cdp.js("document.getElementById('edit-text').select()")
                await cdp.send("Input.insertText", text=ANGER_FIXED)
                await cdp.until("document.getElementById('checks').textContent.includes('passes every check')")
                await cdp.key("Enter", "Enter", 13, modifiers=2)  # 2 = Ctrl
                await cdp.until(f"{_STATUS}.includes('saved: toy/0004')")

                # reload: the decisions come back from reviews/round-0.jsonl
                await cdp.send("Page.reload", ignoreCache=True)
                await cdp.until("document.body && document.body.dataset.ready === '1'")
                seen = {rid: await cdp.js(_decision(rid)) for rid in ("toy/0006", "toy/0001", "toy/0002", "toy/0004")}
                assert seen == {"toy/0006": "accept", "toy/0001": "reject: bad_face",
                                "toy/0002": "reject: ground truth wrong", "toy/0004": "accept (edited)"}
                assert await cdp.js("document.getElementById('progress').textContent.startsWith('4 of ')")
                # the screenshot shows a row with coloured AU mentions and the editor's live checks
                await cdp.select("toy/0005")
                await cdp.letter("e")
                await cdp.until("document.getElementById('checks').textContent.includes('fails')")
                assert await cdp.js("document.querySelector('#card .rationale .hallucinated').textContent") == "AU12"
                assert await cdp.js("document.querySelector('#card .face').naturalWidth") > 0
                assert await cdp.js("document.querySelector('#card .attempts summary').textContent") == \
                    "every attempt (2)"
                assert "failed: hedging" in await cdp.js("document.querySelector('#card .attempt-list').textContent")
                shot = await cdp.send("Page.captureScreenshot", format="png")
        out = tmp / "review.png"
        out.write_bytes(base64.b64decode(shot["data"]))
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_browser_review_then_publish(served: tuple[ReviewSession, str], ws: Path, tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is required in CI for the review page test (apt-get install -y chromium)")
        pytest.skip("chromium not installed (Debian: apt-get update && apt-get install -y chromium); CI installs it")
    session, url = served
    rat = session.rows["toy/0005"].rationale  # as a teacher's repair loop leaves it: a failed attempt, then this
    assert rat is not None
    rat.raw = ["<think>maybe happy (AU12)</think>\n<answer>happiness</answer>", rat.text or ""]
    rat.errors = ["hedging"]
    shot = asyncio.run(_drive(exe, url, tmp_path))
    print(f"review page screenshot: {shot}")
    from PIL import Image

    assert Image.open(shot).size == (1280, 800)

    lines = [json.loads(ln) for ln in (ws / "reviews" / "round-0.jsonl").read_text().splitlines()]
    assert [(ln["id"], ln["decision"], ln.get("reason")) for ln in lines] == [
        ("toy/0006", "accept", None), ("toy/0001", "reject", "bad_face"), ("toy/0002", "reject", "gt_wrong"),
        ("toy/0004", "accept", None)]
    assert lines[1]["note"] == "eyes closed" and lines[2]["gt_wrong"] is True and lines[3]["rationale"] == ANGER_FIXED

    # the next publish applies them and the card counts them
    import pyarrow.parquet as pq

    from fea20k.publish.local import build_release
    from fea20k.workspace import Workspace

    folder = build_release(Workspace(ws), 0).folder
    rejected = {r["id"]: r for r in pq.read_table(folder / "rejected").to_pylist()}
    assert rejected["toy/0001"]["reasons"] == ["human_reject"] and rejected["toy/0001"]["review_note"] == "eyes closed"
    assert rejected["toy/0002"]["excluded_at"] == "review" and rejected["toy/0002"]["review_note"] == "gt_wrong"
    assert rejected["toy/0006"]["review"] == "accept"  # recorded; the checks' verdict stands
    # the edited rationale is the text the release carries, with who edited it
    edited = rejected["toy/0004"]
    assert edited["rationale"] == ANGER_FIXED
    assert any(p["stage"] == "review" and p["value"].startswith("rationale edited by tester")
               for p in edited["provenance"]), edited["provenance"]
    card = (folder / "README.md").read_text()
    for count in ("accept (kept rejected) 2", "reject 2", "rationale edited 1", "ground truth flagged wrong 1"):
        assert count in card, count
    assert "earlier version" not in card  # every decision was made on the row publish releases
