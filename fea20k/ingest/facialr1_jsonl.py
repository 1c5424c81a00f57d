"""The authors' released Facial-R1 / FEA-20K JSONL annotations (docs/facial-r1.md §6.1).

Each line: ``id, dataset, image (str or list), question, AUs ["AU1", ...], labels [emotion, ...], description
(<think>...</think><answer>...</answer>), meta_info, is_valid``. Images are relative to the per-dataset image folder,
so option ``roots = {<dataset name> = "<configured source name>"}`` maps each record's ``dataset`` to a configured
source: its image becomes ``ImageRef(root=<that source>, path=<image>)``. An unmapped dataset resolves against this
source's own root (warned once per dataset).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from fea20k.errors import ConfigError, Fea20kUserError
from fea20k.ingest._common import IMAGE_MISSING, LABEL_PARSE_ERROR, check_image, parse_au_token, warn_line
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.record import FaceRecord, ImageRef, Rationale
from fea20k.stage import register_stage


logger = logging.getLogger(__name__)

RELEASED_INVALID = "released_invalid"  # is_valid = false in the released file (not a docs/corpora.md §13.3 reason)


class FacialR1JsonlConfig(IngestConfig):
    """Options: which files, and where each dataset's images are."""

    files: list[str] = Field(default_factory=list, description="JSONL files under root (default: every *.jsonl)")
    roots: dict[str, str] = Field(default_factory=dict, description="dataset name -> configured source name")
    au_coded: dict[str, list[int]] = Field(
        default_factory=dict, description="dataset name -> the AUs it codes (absent ones become 0; default: unknown)"
    )
    check_images: bool = Field(True, description="exclude records whose image is not under the mapped root")


def split_of(file_stem: str) -> str:
    """``*-Test*`` files -> test, everything else -> train (docs/facial-r1.md §6.4 naming)."""
    return "test" if "test" in file_stem.lower() else "train"


@register_stage("ingest.facialr1_jsonl")
class FacialR1Jsonl(IngestAdapter):
    """Released Facial-R1/FEA-20K JSONL files.

    Config: ``files`` (default all ``*.jsonl`` under root), ``roots`` (dataset -> source), ``au_coded``,
    ``check_images``.

    Output fields: id ``{source}/{file stem}/{record id}``, image (mapped source), split (``test`` for ``*Test*``
    files), emotion (``labels[0]`` normalised by name; other labels in meta), aus (listed AUs = 1),
    rationale (the description; backend "released"); meta dataset, labels, question, meta_info, file, line.

    Drops: label_parse_error (malformed JSON line or field), released_invalid (``is_valid`` false),
    image_missing, image_undecodable (``_common.check_image``).
    """

    Config = FacialR1JsonlConfig
    config: FacialR1JsonlConfig
    corpus = "facialr1_jsonl"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "split rule": "a file whose name contains 'test' -> test, every other file -> train",
        "labels": "labels[0] is the emotion (mapped by name); AUs as listed, 'AU<n>' strings",
    }
    layout = """
FEA-20K/
  *.jsonl     one JSON object per line: id, dataset, image, question, AUs, labels, description, meta_info, is_valid
"""

    def iter_records(self) -> Iterator[FaceRecord]:
        if not self.root.is_dir():
            self.check_layout()
        files = [self.root / f for f in self.config.files] or sorted(self.root.glob("*.jsonl"))
        if not files:
            self.check_layout("<name>.jsonl")
        for f in files:
            if not f.is_file():
                raise ConfigError(f"source {self.source!r}: files entry {f} not found")
        from fea20k.vocab import load_vocab

        vocab = load_vocab()
        self._root_cache: dict[str, Path | None] = {}
        self._warned: set[str] = set()
        seen: set[str] = set()
        for f in files:
            with f.open(encoding="utf-8-sig") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    rec = self._one(f, n, line, vocab.emotions, vocab.synonyms)
                    if rec.id in seen:
                        rec.id = f"{rec.id}#line{n}"
                    seen.add(rec.id)
                    yield rec

    def _source_root(self, name: str) -> Path | None:
        if name not in self._root_cache:
            try:
                self._root_cache[name] = self.ctx.workspace.source_root(name) if name != self.source else self.root
            except Fea20kUserError:
                self._root_cache[name] = None
        return self._root_cache[name]

    def _one(self, f: Path, n: int, line: str, emotions: tuple[str, ...], synonyms: dict[str, str]) -> FaceRecord:
        stem = f.stem
        split = split_of(stem)
        try:
            obj: Any = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj.get("image"), (str, list)):
            warn_line(f, n, "not a JSON object with 'id' and 'image'")
            rec = FaceRecord(id=f"{self.source}/{stem}/line{n}", source=self.source, split=split)
            rec.meta.update(corpus=self.corpus, file=f.name, line=n)
            return self.exclude(rec, LABEL_PARSE_ERROR)
        dataset = str(obj.get("dataset", ""))
        images = obj["image"] if isinstance(obj["image"], list) else [obj["image"]]
        image = str(images[0]) if images else ""
        img_root = self.config.roots.get(dataset, self.source)
        if dataset not in self.config.roots and dataset not in self._warned:
            self._warned.add(dataset)
            logger.warning("%s: dataset %r has no entry in roots; its images resolve against %s", f, dataset,
                           self.root)
        rec = FaceRecord(id=f"{self.source}/{stem}/{obj['id']}", source=self.source, split=split,
                         image=ImageRef(root=img_root, path=image))
        labels = obj.get("labels") or []
        rec.meta.update(corpus=self.corpus, file=f.name, line=n, dataset=dataset, split_raw=stem,
                        labels=labels, question=obj.get("question"), meta_info=obj.get("meta_info"))
        if len(images) > 1:
            rec.meta["images"] = images
        if isinstance(obj.get("description"), str):
            rec.rationale = Rationale(text=obj["description"], annotator="facial-r1-release", backend="released")
        aus_raw = obj.get("AUs") or []
        parsed = [parse_au_token(str(a)) for a in aus_raw] if isinstance(aus_raw, list) else [None]
        if any(p is None for p in parsed) or not isinstance(labels, list):
            warn_line(f, n, f"AUs {aus_raw!r} / labels {labels!r} not understood")
            return self.exclude(rec, LABEL_PARSE_ERROR)
        present = sorted({p[0] for p in parsed if p is not None})
        coded = self.config.au_coded.get(dataset)
        if coded:
            all_aus = sorted(set(coded) | set(present))
            rec.aus, rec.au_coded = {a: int(a in present) for a in all_aus}, all_aus
        else:
            rec.aus = dict.fromkeys(present, 1)
        rec.aus_origin = "gt" if present or coded else None
        if labels:
            raw = str(labels[0]).strip().lower()
            emotion = raw if raw in emotions else synonyms.get(raw)
            rec.meta["raw_label"] = labels[0]
            if emotion is not None:
                rec.emotion, rec.emotion_origin = emotion, "gt"
        if obj.get("is_valid") is False:
            return self.exclude(rec, RELEASED_INVALID)
        if self.config.check_images:
            return self._check_image(rec, f, n)
        return rec

    def _check_image(self, rec: FaceRecord, f: Path, n: int) -> FaceRecord:
        """``rec``, or excluded when its image (under its dataset's root) is missing or not usable."""
        assert rec.image is not None
        root = self._source_root(rec.image.root)
        image = rec.image.path
        if root is None or not image:
            return self.exclude(rec, IMAGE_MISSING)
        problem = check_image(root / image)
        if problem is not None:
            if problem[0] != IMAGE_MISSING:
                warn_line(f, n, f"image {root / image}: {problem[1]}")
                rec.meta["image_error"] = problem[1]
            return self.exclude(rec, problem[0])
        return rec
