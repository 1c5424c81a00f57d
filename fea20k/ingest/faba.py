"""FABA-Instruct (EmoLA, ECCV 2024): JSON annotations over AffectNet images, 106-point normalised landmarks.

docs/corpora.md §12. ``{train,eval}/{split}_{au,emotion}_anno.json``; the image and landmark paths in them are relative
to ``data/`` (the folder holding ``FABAInstruct/``), which is the source root (a root pointing at ``FABAInstruct``
itself also works). One record per image: an image present in both the AU and the emotion file of a split gets both
labels.

* Train entries (LLaVA conversation format, key ``conversations`` or ``conversation``) carry no structured label:
  AUs are the ``AU<n>`` mentions of the gpt turn (EmoLA's own parser; negated mentions such as "not AU12" are picked
  up too, a known limitation; ``meta["label_source"] = "gpt_text"``); emotion stays None.
* Eval entries: emotion ``label`` is an int in **EmoLA order** (0 Happiness, 1 Sadness, 2 Surprise, 3 Anger,
  4 Neutral, 5 Disgust, 6 Fear) or a name; AU ``label`` is ``"1, 2, 25"``; ``gpt4`` is the reference text.
* Landmarks: 212 floats = 106 InsightFace points in normalised [-1, 1] crop coordinates -> scheme
  ``insightface106_norm`` (not pixels).
* ``meta["affectnet_key"]`` = ``<subdir>/<hash>`` from ``.../AffectNet_v2/<subdir>/<hash>.jpg``: the FABA vs
  AffectNet leakage key.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from fea20k.errors import SourceLayoutError
from fea20k.ingest._common import (
    LABEL_OUT_OF_RANGE,
    LABEL_PARSE_ERROR,
    DirIndex,
    parse_au_token,
    unique_records,
)
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.record import FaceRecord
from fea20k.stage import register_stage


logger = logging.getLogger(__name__)

# EmoLA emotions2num (eval_FABA.py): (int label, name, canonical)
EMOLA_TABLE: tuple[tuple[int, str, str], ...] = (
    (0, "Happiness", "happiness"),
    (1, "Sadness", "sadness"),
    (2, "Surprise", "surprise"),
    (3, "Anger", "anger"),
    (4, "Neutral", "neutral"),
    (5, "Disgust", "disgust"),
    (6, "Fear", "fear"),
)
FABA_INT_TO_CANONICAL: dict[int, str] = {i: c for i, _, c in EMOLA_TABLE}
FABA_NAME_TO_CANONICAL: dict[str, str] = {n.lower(): c for _, n, c in EMOLA_TABLE}
# EmoLA's FABA AU vocabulary (eval_FABA.py)
FABA_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 16, 17, 20, 23, 24, 25, 26, 27, 43)
SPLITS = (("train", "train"), ("eval", "test"))
TASKS = ("emotion", "au")
N_LANDMARK_VALUES = 212
_AU_MENTION = re.compile(r"\bAU\s?(\d+)", re.IGNORECASE)
_AFFECTNET_KEY = re.compile(r"AffectNet_v2/(.+)\.[A-Za-z]+$")


def parse_emotion_label(label: Any) -> tuple[str | None, str | None]:
    """``(canonical, exclusion reason)`` of a FABA eval emotion label: an EmoLA-order int or a name."""
    if isinstance(label, bool):
        return None, LABEL_PARSE_ERROR
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label.strip())
    if isinstance(label, int):
        emotion = FABA_INT_TO_CANONICAL.get(label)
        return (emotion, None) if emotion else (None, LABEL_OUT_OF_RANGE)
    if isinstance(label, str):
        emotion = FABA_NAME_TO_CANONICAL.get(label.strip().lower())
        return (emotion, None) if emotion else (None, LABEL_OUT_OF_RANGE)
    return None, LABEL_PARSE_ERROR


def parse_au_label(label: Any) -> list[int] | None:
    """``"1, 2, 25"`` (or a list of ints / "AU1" strings) -> [1, 2, 25]; unparseable -> None."""
    items = label if isinstance(label, list) else str(label).split(",")
    out: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
            continue
        text = str(item).strip()
        if not text:
            continue
        parsed = parse_au_token(text)
        if parsed is None:
            return None
        out.append(parsed[0])
    return sorted(set(out))


def au_mentions(text: str) -> list[int]:
    """AU numbers mentioned in free text (``AU4``, ``AU 12``); negations are NOT understood."""
    return sorted({int(m) for m in _AU_MENTION.findall(text)})


def _occurrence(item: dict[str, Any], k: int) -> dict[str, Any]:
    """The ``k``-th listing of a merged image: each task's ``k``-th entry (its last when it has fewer) and where
    those entries are (``file[index]``)."""
    out: dict[str, Any] = {"errors": item["errors"], "where": []}
    for task in TASKS:
        entries = item.get(task)
        if entries:
            entry, where = entries[min(k, len(entries) - 1)]
            out[task] = entry
            out["where"].append(where)
    return out


def _turns(entry: dict[str, Any]) -> tuple[str | None, str | None]:
    conv = entry.get("conversations", entry.get("conversation"))
    human = gpt = None
    if isinstance(conv, list):
        for turn in conv:
            if isinstance(turn, dict):
                if turn.get("from") == "human" and human is None:
                    human = str(turn.get("value", ""))
                elif turn.get("from") == "gpt" and gpt is None:
                    gpt = str(turn.get("value", ""))
    return human, gpt


@register_stage("ingest.faba")
class Faba(IngestAdapter):
    """FABA-Instruct: emotion and AU annotations (train: GPT-4V text, eval: labels) on AffectNet images.

    Output fields: id ``{source}/{image path without extension}`` (relative to the root), split (train / eval ->
    test), emotion (eval only), aus over EmoLA's 20-AU vocabulary (+ any other mentioned AU), landmarks
    (``insightface106_norm``, normalised); meta affectnet_key, label_source, question, reference texts, where
    (the ``file[index]`` entries the record comes from).

    An eval entry without a ``label`` key is excluded like ``"label": null`` (label_parse_error); a train AU entry
    without a gpt turn keeps its AUs unknown (None), not absent.

    Drops: label_out_of_range, label_parse_error (a malformed entry, an eval entry with no or a bad label),
    image_missing, image_undecodable (``_common.check_image``), label_conflict (an image listed twice in one file
    with different entries).
    """

    Config = IngestConfig
    corpus = "faba"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "AU vocabulary": "EmoLA's 20 AUs (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 16, 17, 20, 23, 24, 25, 26, 27, 43) "
                         "plus any other AU a train answer names; the train AUs come from GPT-4V text, not FACS "
                         "coders",
        "class set": "7 basic emotions (eval labels only)",
        "split rule": "train files -> train, eval files -> test",
    }
    layout = """
data/                                   (the root; paths in the JSON files are relative to it)
  FABAInstruct/train/train_au_anno.json  train_emotion_anno.json  images/  landmarks/
  FABAInstruct/eval/eval_au_anno.json    eval_emotion_anno.json    images/  landmarks/
"""

    def iter_records(self) -> Iterator[FaceRecord]:
        """One record per image: an image listed twice in one file (or under two spellings of one path) is one
        record, or one ``label_conflict`` exclusion when the listings differ (``_common.resolve_duplicates``)."""
        yield from unique_records(self._iter_rows(), self)

    def _iter_rows(self) -> Iterator[FaceRecord]:
        if (self.root / "FABAInstruct").is_dir():
            base, strip = "FABAInstruct", ""
        elif (self.root / "train").is_dir() or (self.root / "eval").is_dir():
            base, strip = "", "FABAInstruct/"
        else:
            self.check_layout("FABAInstruct")
            raise AssertionError  # check_layout raised
        index = DirIndex(self.root)
        found = False
        for folder, split in SPLITS:
            merged: dict[str, dict[str, Any]] = {}
            for task in TASKS:
                path = self.root / base / folder / f"{folder}_{task}_anno.json"
                if not path.is_file():
                    continue
                found = True
                for n, entry in enumerate(self._load(path)):
                    self._merge(merged, path, n, entry, task, strip)
            for rel, item in merged.items():
                # one record per listing of the image in a file (usually one); unique_records resolves repeats
                for k in range(max(1, *(len(item.get(task, ())) for task in TASKS))):
                    yield self._record(rel, _occurrence(item, k), split, index, strip)
        if not found:
            raise SourceLayoutError(f"source {self.source!r} (faba): no *_anno.json under {self.root / base}; "
                                    f"expected:\n{self.layout.strip()}")

    @staticmethod
    def _load(path: Path) -> list[Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except ValueError as e:
            raise SourceLayoutError(f"{path}: not valid JSON ({e}); expected a list of annotation objects") from e
        if not isinstance(data, list):
            raise SourceLayoutError(f"{path}: top level is {type(data).__name__}; expected a list of objects")
        return data

    def _merge(self, merged: dict[str, dict[str, Any]], path: Path, n: int, entry: Any, task: str,
               strip: str) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            logger.warning("%s: entry %d has no 'image' string; the entry becomes an excluded record", path, n)
            rel = f"_malformed/{path.stem}/{n}"
            merged.setdefault(rel, {"errors": []})["errors"].append(LABEL_PARSE_ERROR)
            return
        rel = entry["image"]
        if strip and rel.startswith(strip):
            rel = rel[len(strip):]
        item = merged.setdefault(rel, {"errors": []})
        item.setdefault(task, []).append((entry, f"{path.name}[{n}]"))

    def _record(self, rel: str, item: dict[str, Any], split: str, index: DirIndex, strip: str) -> FaceRecord:
        rec = self.make_record(rel, split=split)
        rec.meta["split_raw"] = "train" if split == "train" else "eval"
        if item["errors"]:
            return self.exclude(rec, *item["errors"])
        rec.meta["where"] = item["where"]
        evaluation = split != "train"
        m = _AFFECTNET_KEY.search(rel)
        if m:
            rec.meta["affectnet_key"] = m.group(1)
        first = item.get("emotion") or item.get("au") or {}
        for key in ("source", "id"):
            if key in first:
                rec.meta[f"faba_{key}"] = first[key]
        reason = None
        emo = item.get("emotion")
        if emo is not None:
            reason = _emotion(rec, emo, item["where"], evaluation)
        au = item.get("au")
        if au is not None and reason is None:
            reason = _aus(rec, au, item["where"], evaluation)
        src = item.get("au") or item.get("emotion") or {}
        self._landmarks(rec, src.get("landmark"), strip)
        if reason is not None:
            return self.exclude(rec, reason)
        return self.check_listed_image(rec, index, rel, item["where"])

    def _landmarks(self, rec: FaceRecord, rel: Any, strip: str) -> None:
        if not isinstance(rel, str):
            return
        if strip and rel.startswith(strip):
            rel = rel[len(strip):]
        points = self.read_landmarks_npy(self.root / rel, N_LANDMARK_VALUES)
        if points is not None:
            rec.landmarks, rec.landmark_scheme = points, "insightface106_norm"


def _emotion(rec: FaceRecord, emo: dict[str, Any], where: str, evaluation: bool) -> str | None:
    """``rec``'s emotion (and its text) from the FABA emotion entry ``emo``; the exclusion reason, if any."""
    _, gpt = _turns(emo)
    if gpt is not None:
        rec.meta["emotion_text"] = gpt
    if "gpt4" in emo:
        rec.meta["emotion_text"] = emo["gpt4"]
    if "label" in emo:
        rec.meta["raw_label"] = emo["label"]
        emotion, reason = parse_emotion_label(emo["label"])
        if reason is not None:
            logger.warning("FABA %s: emotion label %r not understood (%s)", where, emo["label"], reason)
        rec.emotion, rec.emotion_origin = emotion, ("gt" if emotion else None)
        return reason
    if evaluation:  # an eval entry is its label: without one it is as unusable as "label": null
        logger.warning("FABA %s: eval entry has no 'label' key; the record is excluded (%s); add the label "
                       "(an EmoLA-order int or a name) or remove the entry", where, LABEL_PARSE_ERROR)
        return LABEL_PARSE_ERROR
    return None


def _aus(rec: FaceRecord, au: dict[str, Any], where: str, evaluation: bool) -> str | None:
    """``rec``'s AUs (and their text) from the FABA AU entry ``au``: its label, else (train) the AUs its gpt turn
    names; the exclusion reason, if any."""
    _, gpt = _turns(au)
    reason = None
    present: list[int] | None
    if "label" in au:
        rec.meta["au_label_raw"] = au["label"]
        present = parse_au_label(au["label"])
        rec.meta["label_source"] = "label"
        if present is None:
            logger.warning("FABA %s: AU label %r not understood", where, au["label"])
            reason = LABEL_PARSE_ERROR
    elif evaluation:
        logger.warning("FABA %s: eval entry has no 'label' key; the record is excluded (%s); add the label "
                       "(e.g. \"1, 2, 25\") or remove the entry", where, LABEL_PARSE_ERROR)
        present, reason = None, LABEL_PARSE_ERROR
    elif gpt is None:  # no model turn: nothing was said about any AU, so unknown, not absent
        logger.warning("FABA %s: train entry has no gpt turn; its AUs are unknown (None)", where)
        present = None
        rec.aus = dict.fromkeys(FABA_AUS)
        rec.meta["label_source"] = "none"
    else:
        present = au_mentions(gpt)
        rec.meta["label_source"] = "gpt_text"
    rec.meta["au_text"] = au.get("gpt4", gpt)
    if present is not None:
        coded = sorted(set(FABA_AUS) | set(present))
        rec.aus = {a: int(a in present) for a in coded}
        rec.au_coded, rec.aus_origin = coded, "gt"
    return reason
