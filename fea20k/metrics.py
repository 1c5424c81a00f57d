"""Benchmark metrics (``docs/facial-r1.md`` §10) on the one parser: AU F1, emotion accuracy, ROUGE-L.

* **AU F1**, per benchmark source. Predicted AUs are the AU mentions of the think block (the whole output when
  there is none), read by :mod:`fea20k.validate.parse`. The AU classes of a source are the ground-truth AUs seen in
  its samples (as the reference does: every ground-truth AU in the file, not a fixed benchmark subset); predicted
  AUs outside them are ignored. Per-AU precision / recall / F1 with zero division = 0; **macro F1** = mean over
  AUs with at least one positive; **micro F1** from the pooled counts. A source is AU-labelled when any of its
  samples has a ground-truth AU (its other samples then count as "no AU present"), or when the rows say which
  AUs are coded.
* **Emotion accuracy**: the first answer normalised to the canonical vocabulary (the same rule as validation and
  the accuracy reward) equals the label; divided by every sample with an emotion label (unparsed answers count
  as wrong). Per-class recall and the confusion matrix (rows = truth, columns = prediction, plus ``unparsed``).
* **ROUGE-L**: ``rouge_score.RougeScorer(["rougeL"], use_stemmer=True)`` F-measure, reference = the ground-truth
  rationale, hypothesis = the whole model output with its tags (the reference's choice); mean over samples with
  a reference rationale. ``rouge-score`` is imported lazily; when it is missing, ROUGE-L is ``None`` and
  ``rouge_missing`` says how to install it.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fea20k.errors import Fea20kUserError
from fea20k.io import iter_jsonl
from fea20k.validate.parse import parse


logger = logging.getLogger(__name__)

UNPARSED = "unparsed"
ROUGE_HINT = "rouge-score is not installed; ROUGE-L skipped. Install it with: pip install 'fea20k[dev]'"


@dataclass(slots=True)
class EvalSample:
    """One test sample with the model's prediction."""

    id: str
    source: str
    prediction: str
    emotion: str | None = None
    aus: set[int] | None = None  # None: no AU labels
    rationale: str | None = None
    au_coded: bool = False  # the row says which AUs are coded (so an empty ``aus`` means "none present")


@dataclass
class _Acc:
    """Running counts for one benchmark source."""

    n: int = 0
    emo_n: int = 0
    emo_correct: int = 0
    confusion: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    au_rows: list[tuple[set[int] | None, set[int], bool]] = field(default_factory=list)
    rouge: list[float] = field(default_factory=list)


def _f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def au_scores(rows: list[tuple[set[int] | None, set[int], bool]]) -> dict[str, Any] | None:
    """Per-AU and averaged F1 from (gt AUs or None, predicted AUs, coded) rows of one source."""
    labelled = any(gt for gt, _, _ in rows if gt) or any(coded for _, _, coded in rows)
    if not labelled:
        return None
    classes = sorted({a for gt, _, _ in rows if gt for a in gt})
    counts = {a: [0, 0, 0] for a in classes}  # tp, fp, fn
    n = 0
    for gt, pred, _ in rows:
        gt = gt or set()
        n += 1
        for a in classes:
            g, p = a in gt, a in pred
            if g and p:
                counts[a][0] += 1
            elif p:
                counts[a][1] += 1
            elif g:
                counts[a][2] += 1
    per_au = {}
    for a in classes:
        tp, fp, fn = counts[a]
        p, r, f = _f1(tp, fp, fn)
        per_au[a] = {"precision": p, "recall": r, "f1": f, "support": tp + fn}
    with_pos = [v["f1"] for v in per_au.values() if v["support"] > 0]
    tp_all = sum(c[0] for c in counts.values())
    fp_all = sum(c[1] for c in counts.values())
    fn_all = sum(c[2] for c in counts.values())
    return {
        "n": n,
        "per_au": per_au,
        "macro_f1": sum(with_pos) / len(with_pos) if with_pos else 0.0,
        "micro_f1": _f1(tp_all, fp_all, fn_all)[2],
    }


def _emotion_block(acc: _Acc) -> dict[str, Any] | None:
    if not acc.emo_n:
        return None
    truths = sorted(acc.confusion)
    preds = sorted({p for row in acc.confusion.values() for p in row} - {UNPARSED})
    labels = sorted(set(truths) | set(preds))
    cols = labels + ([UNPARSED] if any(UNPARSED in row for row in acc.confusion.values()) else [])
    matrix = [[acc.confusion[t].get(c, 0) for c in cols] for t in truths]
    recall = {t: acc.confusion[t].get(t, 0) / sum(acc.confusion[t].values()) for t in truths}
    return {
        "n": acc.emo_n,
        "accuracy": acc.emo_correct / acc.emo_n,
        "per_class_recall": recall,
        "confusion": {"rows": truths, "columns": cols, "matrix": matrix},
    }


class _Rouge:
    def __init__(self) -> None:
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            self.scorer = None
        else:
            self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def __call__(self, reference: str, hypothesis: str) -> float | None:
        if self.scorer is None:
            return None
        return float(self.scorer.score(reference, hypothesis)["rougeL"].fmeasure)


def evaluate(samples: Iterable[EvalSample]) -> dict[str, Any]:
    """Metrics per benchmark source and over all samples (see the module docstring)."""
    rouge = _Rouge()
    per: dict[str, _Acc] = defaultdict(_Acc)
    for s in samples:
        p = parse(s.prediction, mode="tolerant")
        for acc in (per[s.source], per["all"]):
            acc.n += 1
        if s.emotion is not None:
            pred = p.emotion or UNPARSED
            for acc in (per[s.source], per["all"]):
                acc.emo_n += 1
                acc.emo_correct += pred == s.emotion
                acc.confusion[s.emotion][pred] += 1
        pred_aus = p.aus(("think",)) if p.think is not None else p.aus()
        per[s.source].au_rows.append((s.aus, pred_aus, s.au_coded))
        if s.rationale:
            r = rouge(s.rationale, s.prediction)
            if r is not None:
                per[s.source].rouge.append(r)
                per["all"].rouge.append(r)
    out: dict[str, Any] = {"sources": {}, "rouge_missing": ROUGE_HINT if rouge.scorer is None else None}
    all_rows: list[tuple[set[int] | None, set[int], bool]] = []
    for src in sorted(k for k in per if k != "all"):
        acc = per[src]
        au = au_scores(acc.au_rows)
        if au is not None:  # pool only AU-labelled sources into the overall AU figures
            all_rows.extend((gt or set(), pr, True) for gt, pr, _ in acc.au_rows)
        out["sources"][src] = _block(acc, au)
    total = per.get("all", _Acc())
    out["all"] = _block(total, au_scores(all_rows) if all_rows else None)
    return out


def _block(acc: _Acc, au: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "n": acc.n,
        "emotion": _emotion_block(acc),
        "au": au,
        "rouge_l": {"n": len(acc.rouge), "mean": sum(acc.rouge) / len(acc.rouge)} if acc.rouge else None,
    }


# ---------------------------------------------------------------------------------------------- inputs


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or "id" not in obj or "prediction" not in obj:
            raise Fea20kUserError(f"{path}:{i}: each line needs at least 'id' and 'prediction'")
        yield i, obj


def _aus_of(value: Any) -> set[int]:
    from fea20k.rewards import gt_aus

    return gt_aus(value)


def _emotion_of(value: Any, names: list[str] | None) -> str | None:
    from fea20k.validate.parse import normalise_emotion

    if value is None:
        return None
    if isinstance(value, int):
        if value < 0:
            return None
        if names is None or value >= len(names):
            raise Fea20kUserError(f"emotion class index {value} has no name in the release's ClassLabel")
        return names[value]
    if isinstance(value, list):
        value = value[0] if value else None
        if value is None:
            return None
    text = str(value).replace("<answer>", "").replace("</answer>", "").strip()
    return (normalise_emotion(text) or text) if text else None


def samples_from_lines(path: Path) -> Iterator[EvalSample]:
    """Self-contained prediction lines: ``{id, source, prediction, labels, AUs, description}``."""
    for i, obj in _read_jsonl(path):
        if "source" not in obj:
            raise Fea20kUserError(f"{path}:{i}: without --release, each line needs 'source' (and its labels)")
        has_aus = "AUs" in obj or "aus" in obj
        aus = _aus_of(obj.get("AUs", obj.get("aus"))) if has_aus else None
        yield EvalSample(id=str(obj["id"]), source=str(obj["source"]), prediction=str(obj["prediction"] or ""),
                         emotion=_emotion_of(obj.get("labels", obj.get("emotion")), None), aus=aus,
                         rationale=obj.get("description") or obj.get("rationale"))


def _release_test(release: Path, split: str = "test") -> tuple[dict[str, dict[str, Any]], list[str] | None]:
    """The release's ``split`` rows by id (labels only) and the emotion ClassLabel names."""
    import pyarrow.parquet as pq

    files = sorted(Path(release).glob(f"data/{split}-*.parquet"))
    if not files:
        raise Fea20kUserError(f"{release}: no data/{split}-*.parquet; pass the folder `fea20k build` published "
                              "(e.g. <workspace>/releases/round-0)")
    rows: dict[str, dict[str, Any]] = {}
    names: list[str] | None = None
    for fp in files:
        pf = pq.ParquetFile(fp)
        wanted = [c for c in ("id", "source", "emotion", "aus", "au_coded", "rationale") if c in pf.schema_arrow.names]
        if names is None:
            names = _class_names(pf.schema_arrow.metadata)
        t = pf.read(columns=wanted)
        for row in t.to_pylist():
            rows[str(row["id"])] = row
    if names is None:
        from fea20k.vocab import load_vocab

        names = list(load_vocab().emotions)
    return rows, names


def _class_names(metadata: dict[bytes, bytes] | None) -> list[str] | None:
    if not metadata or b"huggingface" not in metadata:
        return None
    try:
        info = json.loads(metadata[b"huggingface"])
    except json.JSONDecodeError:
        return None
    feats = info.get("info", {}).get("features", {})
    emo = feats.get("emotion", {}) if isinstance(feats, dict) else {}
    names = emo.get("names") if isinstance(emo, dict) else None
    return list(names) if names else None


def _rationale_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("text")
    return value


def samples_from_release(path: Path, release: Path, missing: list[str], split: str = "test"
                         ) -> Iterator[EvalSample]:
    """Prediction lines ``{id, prediction}`` joined to the release's ``split``; unknown ids go to ``missing``."""
    rows, names = _release_test(release, split)
    for _, obj in _read_jsonl(path):
        row = rows.get(str(obj["id"]))
        if row is None:
            missing.append(str(obj["id"]))
            continue
        coded = row.get("au_coded")
        aus = row.get("aus")
        yield EvalSample(id=str(obj["id"]), source=str(row.get("source") or "unknown"),
                         prediction=str(obj["prediction"] or ""), emotion=_emotion_of(row.get("emotion"), names),
                         aus=_aus_of(aus) if aus is not None else None,
                         rationale=_rationale_text(row.get("rationale")), au_coded=bool(coded))


def evaluate_file(predictions: Path, release: Path | None = None, split: str = "test") -> dict[str, Any]:
    """``fea20k eval``: metrics of a predictions JSONL, joined to a release's ``split`` when given."""
    missing: list[str] = []
    samples = (samples_from_release(predictions, release, missing, split) if release
               else samples_from_lines(predictions))
    result = evaluate(samples)
    result["unknown_ids"] = len(missing)
    if missing:
        logger.warning("%d prediction id(s) are not in the release's %s split (first: %s)", len(missing), split,
                       missing[0])
    return result


# ---------------------------------------------------------------------------------------------- rendering


def summary_table(result: dict[str, Any]) -> Any:
    """Rich table: one row per source (and all), emotion accuracy, AU macro/micro F1, ROUGE-L."""
    from rich.table import Table

    t = Table(title="Evaluation by benchmark source")
    for col in ("source", "n", "emotion acc", "AU macro F1", "AU micro F1", "ROUGE-L"):
        t.add_column(col, justify="left" if col == "source" else "right")
    items = list(result["sources"].items()) + [("all", result["all"])]
    for src, b in items:
        emo, au, rl = b["emotion"], b["au"], b["rouge_l"]
        t.add_row(f"[bold]{src}[/bold]" if src == "all" else src, str(b["n"]),
                  f"{emo['accuracy']:.3f} ({emo['n']})" if emo else "-",
                  f"{au['macro_f1']:.3f}" if au else "-", f"{au['micro_f1']:.3f}" if au else "-",
                  f"{rl['mean']:.3f}" if rl else "-")
    return t


def per_au_table(source: str, au: dict[str, Any]) -> Any:
    """Rich table of per-AU precision, recall, F1 and support for one source."""
    from rich.table import Table

    t = Table(title=f"AU F1 - {source}")
    for col in ("AU", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="right")
    for a, v in sorted(au["per_au"].items(), key=lambda kv: int(kv[0])):
        t.add_row(f"AU{a}", f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    return t


def confusion_table(source: str, emotion: dict[str, Any]) -> Any:
    """Rich confusion matrix (rows = truth, columns = prediction) with per-class recall."""
    from rich.table import Table

    conf = emotion["confusion"]
    t = Table(title=f"Emotion confusion - {source} (rows: truth)")
    t.add_column("truth \\ pred")
    for c in conf["columns"]:
        t.add_column(c, justify="right")
    t.add_column("recall", justify="right")
    for truth, row in zip(conf["rows"], conf["matrix"], strict=True):
        cells = [f"[green]{v}[/green]" if c == truth and v else (str(v) if v else "[dim]0[/dim]")
                 for c, v in zip(conf["columns"], row, strict=True)]
        t.add_row(truth, *cells, f"{emotion['per_class_recall'][truth]:.2f}")
    return t


def renderables(result: dict[str, Any]) -> list[Any]:
    """Everything ``fea20k eval`` prints, in order."""
    out: list[Any] = [summary_table(result)]
    for src, b in result["sources"].items():
        if b["au"]:
            out.append(per_au_table(src, b["au"]))
        if b["emotion"]:
            out.append(confusion_table(src, b["emotion"]))
    return out
