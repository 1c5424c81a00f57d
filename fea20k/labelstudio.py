"""Review a round in Label Studio: export its review sample as Label Studio tasks, import the completed annotations
back into ``reviews/round-N.jsonl``.

The export (``fea20k audit --round N --export-labelstudio tasks.json``) writes the rows of the review sample
(:mod:`fea20k.review_sample`: every rejected row and a seeded sample of the accepted ones, the rows the review page
and ``review.gate`` use) in Label Studio's JSON task format: ``data`` holds the face crop as a data URL, the ground
truth, the automatic checks' verdict and the rationale; ``predictions`` holds one pre-annotation per task whose
``model_version`` is the annotator that wrote the rationale, with the rationale as an editable ``TextArea`` result
and the checks' verdict as the ``decision`` choice. The labeling config that names those controls is written
beside it (``tasks.config.xml``); paste it in the project's Settings → Labeling Interface.

The import (``fea20k audit --round N --import-labelstudio export.json``) reads Label Studio's JSON export (Export →
JSON: the tasks with their ``annotations``), takes each task's latest annotation that was not cancelled, and appends
one decision line per task to ``reviews/round-N.jsonl`` under the workspace lock, in the format of
:mod:`fea20k.publish.reviews` (what ``fea20k review`` writes; a re-import appends the same lines again, and the
last line about a row wins): ``accept``; ``reject`` with its ``reason`` code;
``gt_wrong`` (a reject with reason ``gt_wrong``); an edited rationale (``edit``, or an ``accept`` whose text was
changed) is re-checked with the rule set the validate stage used and recorded as an accept with the new
``rationale`` only when it passes; one that fails is not written and is reported with its reasons.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from fea20k.errors import Fea20kUserError
from fea20k.record import FaceRecord
from fea20k.review_sample import DEFAULT_RATE, DEFAULT_SEED, in_review


logger = logging.getLogger(__name__)

POOL_STAGE = "validate"
GATE_STAGE = "review.gate"
DEFAULT_RULES = "validators/default.toml"
# control names of the labeling config: the export's predictions and the import's parser use these
IMAGE, RATIONALE, DECISION, REASON, NOTE = "face", "rationale", "decision", "reason", "note"
DECISIONS = ("accept", "reject", "edit", "gt_wrong")
# the reject reason codes of the review page (cards/review.html), so both tools write the same codes
REASONS = {
    "wrong_emotion": "the answer is not the face's emotion",
    "hallucinated_au": "describes movements the face does not show",
    "vague_rationale": "hedged or generic, no visible evidence",
    "bad_face": "crop, blur or occlusion makes the row useless",
    "other": "see the note",
}
GT_WRONG = "gt_wrong"
NO_ANNOTATOR = "no rationale"  # model_version of a row excluded before it was annotated (a duplicate, a bad crop)
_EXPORT_HINT = "export the project from Label Studio with Export → JSON and pass that file"


class LabelStudioFileError(Fea20kUserError):
    """A Label Studio export that cannot be read as completed tasks of this round."""


# ---------------------------------------------------------------------------------------------- export


def labeling_config() -> str:
    """The Label Studio labeling config matching the exported tasks and the import's result names."""
    reasons = "\n".join(f"    <Choice value={quoteattr(code)} hint={quoteattr(hint)}/>"
                        for code, hint in REASONS.items())
    return f"""<View>
  <Image name="{IMAGE}" value="$image" maxWidth="320px"/>
  <Header value="Ground truth"/>
  <Text name="truth" value="$truth"/>
  <Header value="Automatic checks"/>
  <Text name="checks" value="$checks"/>
  <Header value="Rationale (to correct it: edit the text and choose edit)"/>
  <TextArea name="{RATIONALE}" toName="{IMAGE}" editable="true" maxSubmissions="1" rows="8"/>
  <Header value="Decision"/>
  <Choices name="{DECISION}" toName="{IMAGE}" choice="single-radio" required="true" showInline="true">
    <Choice value="accept"/>
    <Choice value="reject"/>
    <Choice value="edit"/>
    <Choice value="{GT_WRONG}" hint="the ground-truth labels are wrong"/>
  </Choices>
  <Choices name="{REASON}" toName="{IMAGE}" choice="single-radio" visibleWhen="choice-selected"
           whenTagName="{DECISION}" whenChoiceValue="reject">
{reasons}
  </Choices>
  <TextArea name="{NOTE}" toName="{IMAGE}" placeholder="note (optional)" maxSubmissions="1" rows="2"/>
</View>
"""


def sample_settings(ws: Any, round_: int) -> tuple[float, int]:
    """The review sample's rate and seed: the round's ``review.gate`` configuration when it has one (so the export
    holds the rows the gate waits for), else the review page's defaults."""
    if GATE_STAGE in ws.recipe.plan(round_).steps:
        from fea20k.config import validate_model
        from fea20k.validate.review_gate import ReviewGateConfig

        cfg = validate_model(ReviewGateConfig, ws.recipe.stages.get(GATE_STAGE, {}),
                             f"{ws.recipe_path}: [stages.\"{GATE_STAGE}\"]")
        return cfg.sample_rate, cfg.seed
    return DEFAULT_RATE, DEFAULT_SEED


def _pool_records(ws: Any, round_: int, columns: list[str] | None = None) -> Iterator[FaceRecord]:
    from fea20k.io import PART_GLOB, read_chunk

    d = ws.stage_dir(round_, POOL_STAGE)
    parts = sorted(d.glob(PART_GLOB))
    if not parts:
        raise Fea20kUserError(f"round {round_} has no {POOL_STAGE} output in {d}; "
                              f"run `fea20k build --round {round_} -w {ws.root}` first")
    for p in parts:
        yield from read_chunk(p, columns=columns)


def task_json(rec: FaceRecord) -> dict[str, Any]:
    """One Label Studio task: the row's data and the annotator's rationale as an editable pre-annotation."""
    from fea20k.audit import _data_url, gt_summary

    r = rec.rationale
    text = r.text if r is not None and r.text else ""
    annotator = r.annotator if r is not None else NO_ANNOTATOR
    checks = (f"rejected at {rec.excluded_at}: {', '.join(rec.reasons)}" if rec.excluded
              else "accepted by every check")
    data: dict[str, Any] = {"record_id": rec.id, "source": rec.source, "truth": gt_summary(rec), "checks": checks,
                            "rationale": text, "annotator": annotator}
    data["image"] = _data_url(rec.face) or ""
    result = [{"id": "decision", "from_name": DECISION, "to_name": IMAGE, "type": "choices",
               "value": {"choices": ["reject" if rec.excluded else "accept"]}}]
    if text:
        result.insert(0, {"id": "rationale", "from_name": RATIONALE, "to_name": IMAGE, "type": "textarea",
                          "value": {"text": [text]}})
    return {"data": data, "predictions": [{"model_version": annotator, "result": result}]}


def export_tasks(ws: Any, round_: int, path: Path, rate: float | None = None, seed: int | None = None
                 ) -> tuple[int, Path]:
    """Write the round's review sample as Label Studio tasks to ``path`` and the labeling config beside it
    (``<stem>.config.xml``); returns (tasks written, config path). ``rate``/``seed`` default to
    :func:`sample_settings`."""
    from fea20k.io import atomic_write_bytes

    default_rate, default_seed = sample_settings(ws, round_)
    rate = default_rate if rate is None else rate
    seed = default_seed if seed is None else seed
    path = Path(path)
    n = 0
    tmp = path.with_name(f".{path.name}.tmp")
    # streamed: the faces are inlined, so the whole list is never held in memory
    with tmp.open("w", encoding="utf-8") as f:
        f.write("[")
        for rec in _pool_records(ws, round_):
            if in_review(rec, rate, seed):
                f.write(("," if n else "") + "\n" + json.dumps(task_json(rec), ensure_ascii=False))
                n += 1
        f.write("\n]\n")
    tmp.replace(path)
    config = path.with_name(f"{path.stem}.config.xml")
    atomic_write_bytes(config, labeling_config().encode("utf-8"))
    logger.info("round %d: %d Label Studio task(s) to %s (sample rate %g, seed %d)", round_, n, path, rate, seed)
    return n, config


# ---------------------------------------------------------------------------------------------- import


@dataclass
class ImportResult:
    """What an import wrote and what it left out, by kind."""

    written: Counter[str] = field(default_factory=Counter)  # accept / reject / gt_wrong / edit
    skipped: Counter[str] = field(default_factory=Counter)  # no annotation / no decision / not in round / ...
    failed_edits: list[tuple[str, list[str]]] = field(default_factory=list)  # (record id, failed checks)

    def summary(self) -> str:
        w = ", ".join(f"{k} {v}" for k, v in sorted(self.written.items())) or "nothing"
        s = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
        return f"wrote {w}" + (f"; skipped {s}" if s else "")


@dataclass
class _Decision:
    rid: str
    decision: str
    reason: str | None
    note: str | None
    text: str | None  # the rationale as the reviewer left it
    original: str
    reviewer: str
    when: str


def _load_export(path: Path) -> list[dict[str, Any]]:
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelStudioFileError(f"{path}: no such file; {_EXPORT_HINT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LabelStudioFileError(f"{path}: not valid JSON ({e}); {_EXPORT_HINT}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise LabelStudioFileError(f"{path}: expected a JSON list of tasks; {_EXPORT_HINT}")
    return tasks


def _latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    done = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not done:
        return None
    return max(enumerate(done), key=lambda ia: (str(ia[1].get("updated_at") or ia[1].get("created_at") or ""),
                                                ia[0]))[1]


def _results(annotation: dict[str, Any]) -> dict[str, Any]:
    """from_name -> the choices list or the joined TextArea text."""
    out: dict[str, Any] = {}
    for res in annotation.get("result") or []:
        value = res.get("value") if isinstance(res, dict) else None
        if not isinstance(value, dict):
            continue
        if res.get("type") == "choices":
            out[res.get("from_name")] = [str(c) for c in value.get("choices") or []]
        elif res.get("type") == "textarea":
            out[res.get("from_name")] = "\n".join(str(t) for t in value.get("text") or [])
    return out


def _reviewer(annotation: dict[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return f"labelstudio:{who}" if who is not None else "labelstudio"


def _decision(path: Path, i: int, task: dict[str, Any], result: ImportResult) -> _Decision | None:
    data = task.get("data")
    rid = data.get("record_id") if isinstance(data, dict) else None
    if not isinstance(rid, str) or not rid:
        raise LabelStudioFileError(f"{path}: task {i} has no data.record_id; import only tasks written by "
                                   "`fea20k audit --export-labelstudio`")
    ann = _latest_annotation(task)
    if ann is None:
        result.skipped["not annotated"] += 1
        return None
    res = _results(ann)
    choice = (res.get(DECISION) or [None])[0]
    text = res.get(RATIONALE)
    original = str(data.get("rationale") or "")
    if choice == "accept" and text is not None and text.strip() != original.strip():
        choice = "edit"  # the reviewer corrected the text and kept "accept": the new text is the decision
    if choice not in DECISIONS:
        result.skipped["no decision"] += 1
        return None
    reason = (res.get(REASON) or [None])[0] if choice == "reject" else None
    if choice == "reject" and reason not in REASONS:
        reason = "other"
    note = (res.get(NOTE) or "").strip() or None
    when = str(ann.get("updated_at") or ann.get("created_at") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return _Decision(rid, choice, reason, note, text, original, _reviewer(ann), when)


def _rules_for(root: Path, rec: FaceRecord, cache: dict[str, Any]) -> Any:
    """The rule set the validate stage applied to ``rec`` (named in its provenance)."""
    from fea20k.validate.checks import load_ruleset

    where = (rec.provenance.get("validate") or DEFAULT_RULES).split("@", 1)[0]
    if where not in cache:
        path = root / where
        if not path.is_file():
            raise Fea20kUserError(f"rule set {path} (used by the validate stage for {rec.id}) is missing; "
                                  "restore it or rebuild the round")
        cache[where] = load_ruleset(path, where=where)
    return cache[where]


def import_annotations(ws: Any, round_: int, path: Path) -> ImportResult:
    """Append the decisions of a Label Studio JSON export to ``reviews/round-N.jsonl`` (under the workspace lock)."""
    from fea20k.lock import workspace_lock
    from fea20k.publish.reviews import reviews_path
    from fea20k.validate.checks import check_text

    path = Path(path)
    tasks = _load_export(path)
    result = ImportResult()
    decisions = [d for i, t in enumerate(tasks) if (d := _decision(path, i, t, result)) is not None]
    wanted = {d.rid for d in decisions}
    records = {r.id: r for r in _pool_records(ws, round_) if r.id in wanted}
    if decisions and not records:
        raise LabelStudioFileError(f"{path}: none of its {len(decisions)} annotated task(s) is a row of round "
                                   f"{round_}; check --round (the tasks name their rows in data.record_id)")
    rules: dict[str, Any] = {}
    lines: list[dict[str, Any]] = []
    for d in decisions:
        rec = records.get(d.rid)
        if rec is None:
            result.skipped["not a row of this round"] += 1
            logger.warning("%s: %s is not a row of round %d; skipped", path.name, d.rid, round_)
            continue
        line: dict[str, Any] = {"id": d.rid, "reviewer": d.reviewer, "time": d.when}
        if d.decision == "accept":
            line["decision"] = "accept"
        elif d.decision == "reject":
            line.update(decision="reject", reason=d.reason)
        elif d.decision == GT_WRONG:
            # a wrong label makes the row unfit whatever its rationale says, as on the review page
            line.update(decision="reject", reason=GT_WRONG, gt_wrong=True)
        else:
            text = (d.text or "").strip()
            checked = check_text(text, rec, _rules_for(ws.root, rec, rules)) if text else None
            if checked is None or not checked.passed:
                failed = list(checked.reasons) if checked is not None else ["no_rationale"]
                result.failed_edits.append((d.rid, failed))
                result.skipped["edit failing the checks"] += 1
                logger.warning("%s: the edited rationale of %s fails the checks (%s); not imported: fix it in "
                               "Label Studio, export again and re-import", path.name, d.rid, ", ".join(failed))
                continue
            line.update(decision="accept", rationale=text)
        if d.note:
            line["note"] = d.note
        lines.append(line)
        result.written[d.decision] += 1
    if lines:
        out = reviews_path(ws.root, round_)
        with workspace_lock(ws.root, f"fea20k audit --round {round_} --import-labelstudio {path.name}"):
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    logger.info("round %d: imported %s from %s", round_, result.summary(), path)
    return result
