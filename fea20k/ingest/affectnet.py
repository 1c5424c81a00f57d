"""AffectNet: the legacy CSV release (``affectnet_csv``) and the later NPY release "AffectNet8" (``affectnet_npy``).

docs/corpora.md §4-§5. Both releases share the expression ids 0..10; 8/9/10 (None, Uncertain, Non-Face) are
reasoned exclusions, valence/arousal -2 ("not applicable") become ``None``. The validation set serves as the
test set (there is no public test set), so ``validation.csv`` / ``val_set`` map to ``val_split`` (default "test").
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from fea20k.errors import SourceLayoutError
from fea20k.ingest._common import (
    AFFECTNET_NOFACE,
    AFFECTNET_NONE,
    AFFECTNET_UNCERTAIN,
    BAD_BBOX,
    IMAGE_EXTS,
    IMAGE_MISSING,
    IMAGE_UNDECODABLE,
    LABEL_OUT_OF_RANGE,
    LABEL_PARSE_ERROR,
    DirIndex,
    check_image,
    check_images,
    exclusion_columns,
    has_control_chars,
    json_float,
    json_string,
    nested_points,
    rel_stem,
    resolve_duplicates,
    table_of,
    warn_line,
)
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.record import FaceRecord, ImageRef
from fea20k.stage import register_stage


if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

# docs/corpora.md §4: (id, AffectNet name, canonical name or None). Map by id, never by hcai's strings.
EXPRESSION_TABLE: tuple[tuple[int, str, str | None], ...] = (
    (0, "Neutral", "neutral"),
    (1, "Happy", "happiness"),
    (2, "Sad", "sadness"),
    (3, "Surprise", "surprise"),
    (4, "Fear", "fear"),
    (5, "Disgust", "disgust"),
    (6, "Anger", "anger"),
    (7, "Contempt", "contempt"),
    (8, "None", None),
    (9, "Uncertain", None),
    (10, "Non-Face", None),
)
AFFECTNET_TO_CANONICAL: dict[int, str] = {i: c for i, _, c in EXPRESSION_TABLE if c is not None}
AFFECTNET_REJECTS: dict[int, str] = {8: AFFECTNET_NONE, 9: AFFECTNET_UNCERTAIN, 10: AFFECTNET_NOFACE}
CONTEMPT = 7
NOT_APPLICABLE = -2.0  # valence/arousal of Uncertain / No-Face rows

CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
               "expression", "valence", "arousal")
N_LANDMARK_VALUES = 136  # 68 iBUG points, x;y interleaved

# (file-list folder, image folder) patterns seen in the wild, tried in order (docs/corpora.md §4 "Tree")
CSV_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("Manually_Annotated_file_lists", "Manually_Annotated_Images"),
    ("Manually_Annotated_file_lists", "Manually_Annotated/Manually_Annotated_Images"),
    ("Manually_Annotated/Manually_Annotated_file_lists", "Manually_Annotated/Manually_Annotated_Images"),
    ("Manual_Annot_files", "Manual_Annot/Manually_Annotated_Images"),
)
CSV_FILES = (("training.csv", "train"), ("validation.csv", "validation"))


def classify_expression(raw: int, classes: int) -> tuple[str | None, str | None]:
    """``(canonical emotion, exclusion reason)`` of an AffectNet expression id under the 7- or 8-class protocol."""
    if raw in AFFECTNET_REJECTS:
        return None, AFFECTNET_REJECTS[raw]
    emotion = AFFECTNET_TO_CANONICAL.get(raw)
    if emotion is None or (classes == 7 and raw == CONTEMPT):
        return None, LABEL_OUT_OF_RANGE
    return emotion, None


def va_value(value: float) -> float | None:
    """Valence/arousal, with the -2 "not applicable" marker -> None."""
    return None if value == NOT_APPLICABLE or value != value else value


def _affectnet_options(classes: int, val_split: str) -> dict[str, str]:
    """The AffectNet conventions its options set."""
    return {"class set": "8 (contempt kept)" if classes == 8 else "7 (contempt rows excluded as label_out_of_range)",
            "split rule": f"training -> train, validation -> {val_split} (AffectNet has no public test labels)"}


class AffectNetCsvConfig(IngestConfig):
    """Options of the legacy CSV release."""

    SIGNATURE_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"block_size_mb", "threads"})

    classes: Literal[7, 8] = Field(8, description="7: contempt rows excluded (label_out_of_range); 8: kept")
    lists_dir: str | None = Field(None, description="folder of training.csv/validation.csv (auto-detected)")
    images_dir: str | None = Field(None, description="folder of the <subdir>/<hash>.jpg images (auto-detected)")
    check_images: bool = Field(True, description="check every image exists and is not empty (one listing per dir)")
    val_split: Literal["val", "test"] = "test"
    block_size_mb: int = Field(4, ge=1, description="CSV read block size (performance only)")
    threads: int = Field(2, ge=1, le=16, description="threads parsing landmark strings (performance only)")


@register_stage("ingest.affectnet_csv")
class AffectNetCsv(IngestAdapter):
    """AffectNet legacy release: ``Manually_Annotated_file_lists/{training,validation}.csv`` + images.

    Config: ``classes`` (7 or 8), ``lists_dir`` / ``images_dir`` (auto-detected among the three known layouts),
    ``check_images``, ``val_split``.

    Output fields: id ``{source}/{images_dir}/{subdir}/{hash}`` (paths written with ``\\`` or with the image
    folder's name in front are normalised), split (training -> train, validation -> ``val_split``), bbox (None
    when non-positive), 68 iBUG landmarks (``ibug68``), emotion; meta raw_label, valence, arousal (-2 -> None),
    affectnet_key (``subdir/hash``, the FABA leakage key); file and line for an image listed more than once.

    Drops: affectnet_none, affectnet_uncertain, affectnet_noface, label_out_of_range, label_parse_error,
    bad_bbox, image_missing, image_undecodable (``_common.check_image``: empty, not an image, truncated),
    label_conflict (an image listed more than once, in one file or both, with different rows; identical rows are
    one record).
    """

    Config = AffectNetCsvConfig
    config: AffectNetCsvConfig
    corpus = "affectnet_csv"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "label order": "0..7 = neutral, happiness, sadness, surprise, fear, disgust, anger, contempt; 8 none, "
                       "9 uncertain, 10 non-face are excluded",
    }

    def conventions(self) -> dict[str, str]:
        return {**self.CONVENTIONS, **_affectnet_options(self.config.classes, self.config.val_split)}
    layout = """
AffectNet/
  Manually_Annotated_file_lists/training.csv, validation.csv   (header subDirectory_filePath,face_x,...,arousal)
  Manually_Annotated_Images/<subdir>/<hash>.jpg                (or Manually_Annotated/Manually_Annotated_Images,
                                                                or Manual_Annot_files + Manual_Annot/...)
"""

    def _detect(self) -> tuple[str, str]:
        cfg = self.config
        if not self.root.is_dir():
            self.check_layout()
        lists = cfg.lists_dir
        images = cfg.images_dir
        if lists is None:
            for cand_lists, _ in CSV_LAYOUTS:
                if any((self.root / cand_lists / name).is_file() for name, _ in CSV_FILES):
                    lists = cand_lists
                    break
        if images is None:
            for _, cand_images in CSV_LAYOUTS:
                if (self.root / cand_images).is_dir():
                    images = cand_images
                    break
        if lists is None or (images is None and cfg.check_images):
            found = sorted(p.name for p in self.root.iterdir())[:12]
            raise SourceLayoutError(
                f"source {self.source!r} ({self.corpus}): {self.root} is not the AffectNet CSV layout: no "
                f"{'file lists (training.csv/validation.csv)' if lists is None else 'image folder'} found; "
                f"expected:\n{self.layout.strip()}\nfound: {found}; or set lists_dir / images_dir"
            )
        return lists, images or CSV_LAYOUTS[0][1]

    def iter_tables(self) -> Iterator[pa.Table]:
        """One Arrow table per CSV block (columnar path; ``iter_records`` is derived from it).

        Ids are unique: a pre-scan of the path column of both files (in a thread, beside the first blocks) finds the
        images listed more than once; their rows take the per-row path and are held, then resolved by
        ``_common.resolve_duplicates`` (one record, or one ``label_conflict`` exclusion) in a last table.
        """
        lists, images = self._detect()
        index = DirIndex(self.root) if self.config.check_images else None
        files = []
        for name, split_raw in CSV_FILES:
            path = self.root / lists / name
            if not path.is_file():
                logger.info("%s: %s not present; skipped", self.source, path)
                continue
            files.append((path, split_raw))
        with ThreadPoolExecutor(max_workers=1) as prescan:
            repeats = _Repeats(prescan.submit(self._repeated, images, [path for path, _ in files]))
            for path, split_raw in files:
                split = "train" if split_raw == "train" else self.config.val_split
                yield from self._csv_tables(path, images, split, split_raw, index, repeats)
        if repeats.held:
            from fea20k.schema import to_arrow

            yield to_arrow([resolve_duplicates(group, self) for group in repeats.held.values()])

    def _repeated(self, images: str, paths: list[Path]) -> tuple[set[str], pa.Array | None]:
        """The ids listed more than once across ``paths``: the path column only, read with the same CSV options
        and normalised as the records' ids are (well-formed and malformed rows alike)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        keys = []
        for path in paths:
            names = _header(path)
            bad: list[str] = []

            def on_invalid(row: pacsv.InvalidRow, bad: list[str] = bad) -> str:
                bad.append(row.text)
                return "skip"

            table = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(use_threads=True, block_size=self.config.block_size_mb << 20,
                                               column_names=names, skip_rows=1),
                parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(column_types={"subDirectory_filePath": pa.string()},
                                                     include_columns=["subDirectory_filePath"],
                                                     strings_can_be_null=True),
            )
            keys.append(_image_keys(table.column(0), images))
            firsts = [next(csv.reader(io.StringIO(text)), [""])[:1] for text in bad]
            keys.append(pa.array([rel_stem(image_path(f[0], images)) for f in firsts if f], pa.string()))
        chunks = [c for k in keys for c in (k.chunks if isinstance(k, pa.ChunkedArray) else [k])]
        if not chunks:
            return set(), None
        counts = pc.value_counts(pa.chunked_array(chunks, pa.string()))
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1)).drop_null()
        repeated = repeated.filter(pc.not_equal(repeated, ""))  # empty paths get line ids
        if not len(repeated):
            return set(), None
        logger.info("%s: %d image(s) listed more than once; each becomes one record", self.source, len(repeated))
        return {f"{self.source}/{images}/{k}" for k in repeated.to_pylist()}, repeated

    # ------------------------------------------------------------------------------------------- CSV reading

    def _csv_tables(self, path: Path, images: str, split: str, split_raw: str,
                    index: DirIndex | None, repeats: _Repeats) -> Iterator[pa.Table]:
        """Stream ``path`` block by block. Well-formed rows are built column-wise (:meth:`_fast_table`); the rare
        odd rows (non-numeric label or box, bad landmarks, control characters) go through :meth:`_row`, and rows
        with the wrong column count through :meth:`_malformed`; all are put back in file order."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        from fea20k.schema import to_arrow

        bad: list[tuple[int, str]] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            bad.append((row.number or 0, row.text))
            return "skip"

        names = _header(path)
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=self.config.block_size_mb << 20,
                                           column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 include_columns=list(CSV_COLUMNS), strings_can_be_null=True),
        )
        # the landmark strings (most of the work, in Arrow kernels that release the GIL) are parsed by a thread
        # pool, up to `threads` blocks ahead of the block being assembled; memory: a few blocks
        with ThreadPoolExecutor(max_workers=self.config.threads) as pool:
            pending: deque[tuple[pa.RecordBatch, Future]] = deque()
            state = {"line": 2}  # 1-based line of the next data row (line 1 is the header)
            for batch in reader:
                pending.append((batch, pool.submit(_landmark_values, batch.column("facial_landmarks"))))
                if len(pending) > self.config.threads:
                    batch, parsed = pending.popleft()
                    yield from self._assemble(path, batch, parsed.result(), bad, state, images, split, split_raw,
                                              index, repeats)
            while pending:
                batch, parsed = pending.popleft()
                yield from self._assemble(path, batch, parsed.result(), bad, state, images, split, split_raw, index,
                                          repeats)
        if bad:
            bad.sort()
            recs = repeats.keep([self._malformed(path, num, text, images, split, split_raw) for num, text in bad],
                                path)
            if recs:
                yield to_arrow(recs)

    def _assemble(self, path: Path, batch: pa.RecordBatch, landmarks: tuple[Any, Any, Any],
                  bad: list[tuple[int, str]], state: dict[str, int], images: str, split: str, split_raw: str,
                  index: DirIndex | None, repeats: _Repeats) -> Iterator[pa.Table]:
        """One block's table: well-formed rows built column-wise, odd rows through the per-row path, rows with
        the wrong column count (``bad``, from the CSV reader) put back at their line."""
        import numpy as np
        import pyarrow as pa

        from fea20k.schema import to_arrow

        line, n = state["line"], batch.num_rows
        bad.sort()
        lines = line + np.arange(n, dtype=np.int64)
        for number, _ in bad:  # malformed rows hold their own line numbers
            lines[lines >= number] += 1
        last = int(lines[-1]) if n else line - 1
        here = [b for b in bad if b[0] <= last]
        del bad[:len(here)]
        tables, order = [], []
        if n:
            fast, slow_rows = self._fast_table(path, batch, landmarks, lines, images, split, split_raw, index,
                                               repeats)
            tables.append(fast)
            order.append(lines[np.setdiff1d(np.arange(n), slow_rows, assume_unique=True)])
            if len(slow_rows):
                recs = self._slow_rows(path, batch, slow_rows, lines, images, split, split_raw, index)
                kept = [i for i, rec in enumerate(recs) if not repeats.hold(rec, path, int(lines[slow_rows[i]]))]
                if kept:
                    tables.append(to_arrow([recs[i] for i in kept]))
                    order.append(lines[slow_rows[kept]])
        if here:
            recs = [self._malformed(path, num, text, images, split, split_raw) for num, text in here]
            kept = [i for i, rec in enumerate(recs) if not repeats.hold(rec, path, here[i][0])]
            if kept:
                tables.append(to_arrow([recs[i] for i in kept]))
                order.append(np.array([here[i][0] for i in kept], dtype=np.int64))
        state["line"] = max(last, here[-1][0] if here else 0) + 1
        if len(tables) == 1:
            yield tables[0]
        elif tables:
            yield pa.concat_tables(tables).take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def _fast_table(self, path: Path, batch: pa.RecordBatch, landmarks: tuple[Any, Any, Any], lines: Any,
                    images: str, split: str, split_raw: str, index: DirIndex | None,
                    repeats: _Repeats) -> tuple[pa.Table, Any]:
        """The well-formed rows of ``batch`` as a table built column-wise, and the positions of the other rows
        (odd rows, and rows of images listed more than once)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        n = batch.num_rows
        sub = _image_paths(batch.column("subDirectory_filePath"), images)
        expr, expr_ok = _numbers(batch.column("expression"), pa.int64())
        box = [_numbers(batch.column(c), pa.float64()) for c in ("face_x", "face_y", "face_width", "face_height")]
        va = [_numbers(batch.column(c), pa.float64()) for c in ("valence", "arousal")]
        flat, has_lnd, lnd_bad = landmarks
        slow = ~expr_ok | lnd_bad | np.asarray(pc.fill_null(pc.equal(pc.binary_length(sub), 0), True), dtype=bool)
        slow |= np.asarray(has_control_chars(sub), dtype=bool)
        for values, ok in box:
            slow |= ~ok | ~np.isfinite(values)
        for values, _ in va:
            slow |= np.isinf(values)
        if repeats.keys is not None:
            slow |= np.asarray(pc.fill_null(pc.is_in(_stems(sub), value_set=repeats.keys), False), dtype=bool)
        slow_rows = np.flatnonzero(slow)
        if len(slow_rows):
            keep = ~slow
            keep_arr = pa.array(keep)
            flat = flat.reshape(-1, N_LANDMARK_VALUES)[keep[has_lnd]]
            has_lnd = has_lnd[keep]
            sub = sub.filter(keep_arr)
            expr = expr[keep]
            box = [(v[keep], ok[keep]) for v, ok in box]
            va = [(v[keep], ok[keep]) for v, ok in va]
            lines = lines[keep]
            n = int(keep.sum())
        # labels: one lookup table over ids 0..10 (+ one slot for "outside 0..10")
        in_range = (expr >= 0) & (expr <= 10)
        slot = np.where(in_range, expr, 11)
        emotions: list[str | None] = []
        reasons: list[str | None] = []
        for raw in range(11):
            emotion, reason = classify_expression(raw, self.config.classes)
            emotions.append(emotion)
            reasons.append(reason)
        slot_arr = pa.array(slot)
        emotion = pc.take(pa.array([*emotions, None], pa.string()), slot_arr)
        reason = pc.take(pa.array([*reasons, LABEL_OUT_OF_RANGE], pa.string()), slot_arr)
        for i in np.flatnonzero(~in_range).tolist():
            warn_line(path, int(lines[i]), f"expression {int(expr[i])} is outside 0..10")
        relpath = pc.binary_join_element_wise(images, sub, "/")
        image_path = relpath
        image_error: object = ""
        if index is not None:
            checked = np.asarray(reason.is_null(), dtype=bool)
            rows = np.flatnonzero(checked)
            real, size = index.lookup_many(relpath.filter(pa.array(checked)))
            pick = np.full(n, -1, dtype=np.int64)
            pick[rows] = np.arange(len(rows))
            image_path = pc.coalesce(pc.take(real, pa.array(pick, mask=pick < 0)), relpath)
            codes = np.zeros(n, dtype=np.int8)
            codes[rows[size < 0]] = 1
            # the signature check of every image found (threads; a few syscalls and <= 96 bytes read per file)
            found = np.flatnonzero(size >= 0)
            real_found = real.filter(pa.array(size >= 0)).to_pylist()
            root = str(self.root)
            problems = check_images([os.path.join(root, r) for r in real_found], size[found], self.config.threads * 4)
            bad = [(k, p) for k, p in enumerate(problems) if p is not None]
            if bad:
                details = np.full(n, None, dtype=object)
                for k, (code_reason, detail) in bad:
                    codes[rows[found[k]]] = 1 if code_reason == IMAGE_MISSING else 2
                    details[rows[found[k]]] = detail
                detail_arr = pa.array(details, pa.string())
                image_error = pc.if_else(detail_arr.is_valid(), pc.binary_join_element_wise(
                    ', "image_error": ', json_string(detail_arr), ""), "")
                logger.warning("%s: %d image(s) not usable (first: %s: %s); those records are excluded "
                               "(image_undecodable / image_missing); re-extract them from the release archive",
                               path, len(bad), self.root / real_found[bad[0][0]], bad[0][1][1])
            reason = pc.coalesce(reason, pc.take(pa.array([None, IMAGE_MISSING, IMAGE_UNDECODABLE], pa.string()),
                                                 pa.array(codes)))
        (x, _), (y, _), (w, _), (h, _) = box
        positive = (w > 0) & (h > 0)
        n_nonpositive = int((~positive).sum())
        if n_nonpositive:
            self.stats.add("bbox_nonpositive", n_nonpositive)
        bbox = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(positive.astype(np.int32) * 4)]).astype(np.int32)),
            pa.array(np.stack([x, y, w, h], axis=1)[positive].reshape(-1).astype(np.float32)),
            mask=pa.array(~positive))
        key = _stems(sub)
        valence, arousal = (pa.array(v, mask=np.isnan(v) | (v == NOT_APPLICABLE)) for v, _ in va)
        no_box: object = ""
        if n_nonpositive:
            raw_box = pc.binary_join_element_wise(*(json_float(pa.array(v)) for v in (x, y, w, h)), ", ")
            raw_box = pc.binary_join_element_wise(', "bbox_raw": [', raw_box, "]", "")
            no_box = pc.if_else(pa.array(positive), "", raw_box)
        meta = pc.binary_join_element_wise(
            '{"affectnet_key": ', json_string(key), ', "arousal": ', json_float(arousal),
            no_box,
            f', "corpus": "{self.corpus}"', image_error, ', "raw_label": ', pc.cast(pa.array(expr), pa.string()),
            f', "split_raw": {json.dumps(split_raw)}, "valence": ', json_float(valence), "}", "")
        from fea20k.schema import IMAGE_REF

        image = pa.StructArray.from_arrays([pa.repeat(pa.scalar(self.source), n), image_path,
                                            pa.nulls(n, pa.int32())], fields=list(IMAGE_REF))
        table = table_of(n, {
            "id": pc.binary_join_element_wise(f"{self.source}/{images}", key, "/"),
            "source": self.source, "split": split, "image": image,
            "bbox": bbox, "landmarks": nested_points(flat, has_lnd, N_LANDMARK_VALUES // 2),
            "landmark_scheme": pc.if_else(pa.array(has_lnd), "ibug68", pa.scalar(None, pa.string())),
            "emotion": emotion,
            "emotion_origin": pc.if_else(emotion.is_valid(), "gt", pa.scalar(None, pa.string())),
            **exclusion_columns(reason, self.name),
            "meta": meta,
        })
        return table, slow_rows

    def _slow_rows(self, path: Path, batch: pa.RecordBatch, rows: Any, lines: Any, images: str, split: str,
                   split_raw: str, index: DirIndex | None) -> list[FaceRecord]:
        """The odd rows of ``batch`` through the per-row path (one warning each, naming file and line)."""
        import pyarrow as pa

        picked = batch.take(pa.array(rows))
        cols = {name: picked.column(name).to_pylist() for name in CSV_COLUMNS}
        out = []
        for k, i in enumerate(rows.tolist()):
            raw_expr = cols["expression"][k]
            expr = _to_number(raw_expr, int)
            va = [va_value(v) if v is not None else None
                  for v in (_to_number(cols[c][k], float) for c in ("valence", "arousal"))]
            row = (cols["subDirectory_filePath"][k],
                   *(_to_number(cols[c][k], float) for c in ("face_x", "face_y", "face_width", "face_height")),
                   expr, *va, raw_expr, _parse_landmark_string(cols["facial_landmarks"][k]))
            out.append(self._row(path, int(lines[i]), row, images, split, split_raw, index))
        return out

    def _new(self, relpath: str, **fields: object) -> FaceRecord:
        rec = FaceRecord(id=f"{self.source}/{rel_stem(relpath)}", source=self.source,
                         image=ImageRef(root=self.source, path=relpath), **fields)  # type: ignore[arg-type]
        rec.meta["corpus"] = self.corpus
        return rec

    def _malformed(self, path: os.PathLike[str], line: int, text: str, images: str, split: str,
                   split_raw: str) -> FaceRecord:
        fields = next(csv.reader(io.StringIO(text)), [""])
        sub = image_path(fields[0], images) if fields else ""
        sub = sub or f"_malformed/{os.path.basename(path)}/{line}"
        warn_line(path, line, f"{len(fields)} columns, expected {len(CSV_COLUMNS)}")
        rec = self._new(f"{images}/{sub}", split=split)
        rec.meta.update(split_raw=split_raw, line=line, raw_row=text[:500])
        return self.exclude(rec, LABEL_PARSE_ERROR)

    def _row(self, path: os.PathLike[str], line: int, row: tuple, images: str, split: str, split_raw: str,
             index: DirIndex | None) -> FaceRecord:
        """One CSV row (already split into typed columns by :func:`_parse_columns`) -> a record. Hot path."""
        sub, x, y, w, h, expr, valence, arousal, raw_expr, landmarks = row
        sub = image_path(sub or "", images) or f"_malformed/{os.path.basename(path)}/{line}"
        relpath = f"{images}/{sub}"
        key = rel_stem(sub)
        meta = {"corpus": self.corpus, "split_raw": split_raw, "affectnet_key": key, "raw_label": expr,
                "valence": valence, "arousal": arousal}
        rec = FaceRecord(id=f"{self.source}/{images}/{key}", source=self.source, split=split,
                         image=ImageRef(root=self.source, path=relpath), meta=meta)
        if expr is None:
            warn_line(path, line, f"expression {raw_expr!r} is not an integer")
            meta["raw_label"] = raw_expr
            return self.exclude(rec, LABEL_PARSE_ERROR)
        if sub.startswith("_malformed/"):
            warn_line(path, line, "empty subDirectory_filePath")
            return self.exclude(rec, LABEL_PARSE_ERROR)
        emotion, reason = classify_expression(expr, self.config.classes)
        if reason == LABEL_OUT_OF_RANGE and expr != CONTEMPT:
            warn_line(path, line, f"expression {expr} is outside 0..10")
        if isinstance(landmarks, str):
            warn_line(path, line, landmarks)
            return self.exclude(rec, LABEL_PARSE_ERROR)
        if landmarks is not None:
            rec.landmarks, rec.landmark_scheme = landmarks, "ibug68"
        if x is None or y is None or w is None or h is None:
            warn_line(path, line, "face box is not numeric")
            return self.exclude(rec, BAD_BBOX)
        if w > 0 and h > 0:
            rec.bbox = [x, y, w, h]
        else:
            meta["bbox_raw"] = [x, y, w, h]
            self.stats.add("bbox_nonpositive")
        if reason is not None:
            return self.exclude(rec, reason)
        rec.emotion, rec.emotion_origin = emotion, "gt"
        if index is not None:
            hit = index.lookup(relpath)
            if hit is None:
                return self.exclude(rec, IMAGE_MISSING)
            if hit[0] != relpath:  # extension case differs from the CSV (.JPG on disk)
                rec.image = ImageRef(root=self.source, path=hit[0])
            problem = check_image(self.root / hit[0], hit[1])
            if problem is not None:
                warn_line(path, line, f"image {self.root / hit[0]}: {problem[1]}; re-extract it from the release "
                                      f"archive")
                meta["image_error"] = problem[1]
                return self.exclude(rec, problem[0])
        return rec


class _Repeats:
    """The ids listed more than once (from :meth:`AffectNetCsv._repeated`, still running when this is made: the
    first use waits for it) and their records, held until the end."""

    def __init__(self, pending: Future[tuple[set[str], pa.Array | None]]) -> None:
        self._pending: Future[tuple[set[str], pa.Array | None]] | None = pending
        self._ids: set[str] = set()
        self._keys: pa.Array | None = None
        self.held: dict[str, list[FaceRecord]] = {}

    def _ready(self) -> None:
        if self._pending is not None:
            self._ids, self._keys = self._pending.result()
            self._pending = None

    @property
    def keys(self) -> pa.Array | None:
        """The repeated image keys (``subdir/hash``), for a vectorised membership test; None when there are none."""
        self._ready()
        return self._keys

    def hold(self, rec: FaceRecord, path: Path, line: int) -> bool:
        """Hold ``rec`` (noting where it was listed) when its id repeats; ``False``: it is unique, emit it."""
        self._ready()
        if rec.id not in self._ids:
            return False
        rec.meta.update(file=path.name, line=line)
        self.held.setdefault(rec.id, []).append(rec)
        return True

    def keep(self, recs: list[FaceRecord], path: Path) -> list[FaceRecord]:
        """The records of ``recs`` that are not held (malformed rows, which carry their own ``meta["line"]``)."""
        return [r for r in recs if not self.hold(r, path, r.meta.get("line", 0))]


def _header(path: Path) -> list[str]:
    """The column names of an AffectNet CSV; a SourceLayoutError naming the columns it lacks."""
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8-sig").strip().split(",")
    names = [h.strip() for h in header]
    missing = [c for c in CSV_COLUMNS if c not in names]
    if missing:
        raise SourceLayoutError(
            f"{path}: header {names} lacks column(s) {missing}; expected the AffectNet header {','.join(CSV_COLUMNS)}"
        )
    return names


def image_path(sub: str, images: str) -> str:
    """A ``subDirectory_filePath`` value as a path under the image folder: trimmed, ``\\`` -> ``/`` (lists written
    on Windows), leading ``/`` and a leading ``<image folder name>/`` dropped. :func:`_image_paths` is its
    vectorised twin; the two must agree."""
    p = sub.strip().replace("\\", "/").lstrip("/")
    prefix = images.rsplit("/", 1)[-1] + "/"
    return p[len(prefix):] if p.startswith(prefix) else p


def _image_paths(column: pa.Array | pa.ChunkedArray, images: str) -> pa.Array:
    """:func:`image_path` over an Arrow string column (nulls stay null)."""
    import pyarrow.compute as pc

    sub = pc.utf8_trim_whitespace(column)
    if pc.any(pc.match_substring(sub, "\\")).as_py():  # a whole-column test first: the rewrites cost more
        sub = pc.replace_substring(sub, "\\", "/")
    prefix = images.rsplit("/", 1)[-1] + "/"
    if pc.any(pc.or_(pc.starts_with(sub, "/"), pc.starts_with(sub, prefix))).as_py():
        sub = pc.replace_substring_regex(sub, f"^/*(?:{re.escape(prefix)})?", "", max_replacements=1)
    return sub


def _stems(sub: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Image paths without their extension: the image keys (``subdir/hash``) ids are made of."""
    import pyarrow.compute as pc

    if pc.all(pc.ends_with(sub, ".jpg")).as_py():  # the usual case, 3x cheaper than the regex
        return pc.utf8_slice_codeunits(sub, 0, -4)
    return pc.replace_substring_regex(sub, r"\.[^./]*$", "", max_replacements=1)


def _image_keys(column: pa.Array | pa.ChunkedArray, images: str) -> pa.Array:
    """The id keys of a raw path column, as the records get them. An empty key ("", which may repeat) matches no
    record: rows with an empty path get line ids and take the per-row path anyway."""
    return _stems(_image_paths(column, images))


def _to_number(value: str | None, kind: type) -> float | int | None:
    try:
        return kind(value) if value is not None else None
    except ValueError:
        return None


def _parse_landmark_string(s: str | None) -> list[list[float]] | None | str:
    import numpy as np

    if s is None or not s.strip():
        return None
    tokens = list(s.strip().strip(";").split(";"))
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        return "facial_landmarks holds a non-numeric value"
    if values.size != N_LANDMARK_VALUES:
        return f"facial_landmarks has {values.size} values, expected {N_LANDMARK_VALUES}"
    return values.reshape(-1, 2).tolist()


# ---------------------------------------------------------------------------------------------- NPY release


class AffectNetNpyConfig(IngestConfig):
    """Options of the NPY release."""

    classes: Literal[7, 8] = 8
    check_images: bool = Field(True, description="read each image header: size -> bbox, empty -> undecodable")
    val_split: Literal["val", "test"] = "test"


NPY_SPLITS = (("train_set", "train"), ("val_set", None))


def load_npy_scalar(path: os.PathLike[str]) -> str:
    """A 0-d ``.npy`` array (the release stores unicode strings such as ``array('3', dtype='<U1')``) as text."""
    import numpy as np

    value = np.load(path, allow_pickle=False)
    if value.ndim != 0:
        raise ValueError(f"expected a 0-d array, got shape {value.shape}")
    return str(value.item())


@register_stage("ingest.affectnet_npy")
class AffectNetNpy(IngestAdapter):
    """AffectNet NPY release ("AffectNet8"): ``{train,val}_set/images/<id>.jpg`` + ``annotations/<id>_*.npy``.

    Config: ``classes`` (7 or 8), ``check_images`` (reads each image header for its size), ``val_split``.

    Output fields: id ``{source}/{train_set|val_set}/images/{id}``, split, emotion (ids as the CSV release; the
    0-d unicode labels are cast with ``int()``), 68 landmarks ``ibug68`` (None when ``_lnd.npy`` is missing),
    bbox = the whole 224x224 crop; meta raw_label, valence, arousal.

    Drops: affectnet_none/uncertain/noface, label_out_of_range, label_parse_error (missing or unreadable
    ``_exp.npy``), image_missing, image_undecodable (``_common.check_image``, then the header PIL reads).
    Ids are unique by construction (one per ``<id>`` stem).
    """

    Config = AffectNetNpyConfig
    config: AffectNetNpyConfig
    corpus = "affectnet_npy"
    CONVENTIONS: ClassVar[dict[str, str]] = AffectNetCsv.CONVENTIONS

    def conventions(self) -> dict[str, str]:
        return {**self.CONVENTIONS, **_affectnet_options(self.config.classes, self.config.val_split)}
    layout = """
AffectNet/
  train_set/images/<id>.jpg   train_set/annotations/<id>_exp.npy, <id>_val.npy, <id>_aro.npy, <id>_lnd.npy
  val_set/images/<id>.jpg     val_set/annotations/...
"""

    def iter_records(self) -> Iterator[FaceRecord]:
        present = [d for d, _ in NPY_SPLITS if (self.root / d / "annotations").is_dir()]
        if not present:
            self.check_layout("train_set/annotations")
        for folder, split in NPY_SPLITS:
            if folder in present:
                yield from self._split(folder, split or self.config.val_split)

    def _split(self, folder: str, split: str) -> Iterator[FaceRecord]:
        base = self.root / folder
        images: dict[str, str] = {}
        if (base / "images").is_dir():
            with os.scandir(base / "images") as it:
                for e in it:
                    stem, dot, ext = e.name.rpartition(".")
                    if dot and ("." + ext.lower()) in IMAGE_EXTS:
                        if stem in images:  # 1.jpg and 1.png: one id; the choice must not follow listing order
                            logger.warning("%s: %s and %s share the id %s; %s is used", base / "images",
                                           images[stem], e.name, stem, min(images[stem], e.name))
                            images[stem] = min(images[stem], e.name)
                        else:
                            images[stem] = e.name
        ann: set[str] = set()
        with os.scandir(base / "annotations") as it:
            for e in it:
                if e.name.endswith("_exp.npy"):
                    ann.add(e.name[: -len("_exp.npy")])
        ids = sorted(set(images) | ann, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))
        for sid in ids:
            yield self._one(folder, split, sid, images.get(sid), sid in ann)

    def _one(self, folder: str, split: str, sid: str, image: str | None, has_exp: bool) -> FaceRecord:
        import numpy as np

        ann = self.root / folder / "annotations"
        rec = self.make_record(f"{folder}/images/{image or sid + '.jpg'}", split=split)
        rec.meta["split_raw"] = folder
        if not has_exp:
            logger.warning("%s: no %s_exp.npy for image %s; the record is excluded", ann, sid, image)
            return self.exclude(rec, LABEL_PARSE_ERROR)
        exp_path = ann / f"{sid}_exp.npy"
        try:
            raw = load_npy_scalar(exp_path)
            expr = int(float(raw))
        except (ValueError, OSError) as e:
            logger.warning("%s: unreadable expression (%s); the record is excluded", exp_path, e)
            return self.exclude(rec, LABEL_PARSE_ERROR)
        rec.meta["raw_label"] = expr
        for key, suffix in (("valence", "val"), ("arousal", "aro")):
            p = ann / f"{sid}_{suffix}.npy"
            try:
                rec.meta[key] = va_value(float(load_npy_scalar(p)))
            except (ValueError, OSError):
                rec.meta[key] = None
        lnd_path = ann / f"{sid}_lnd.npy"
        if lnd_path.is_file():
            try:
                lnd = np.load(lnd_path, allow_pickle=False).astype(np.float64).reshape(-1)
            except (ValueError, OSError) as e:
                logger.warning("%s: unreadable landmarks (%s); landmarks left empty", lnd_path, e)
                lnd = None
            if lnd is not None and lnd.size == N_LANDMARK_VALUES:
                rec.landmarks = lnd.reshape(-1, 2).tolist()
                rec.landmark_scheme = "ibug68"
            elif lnd is not None:
                logger.warning("%s: %d values, expected %d; landmarks left empty", lnd_path, lnd.size,
                               N_LANDMARK_VALUES)
        else:
            self.stats.add("landmarks_missing")
        emotion, reason = classify_expression(expr, self.config.classes)
        if reason is not None:
            if reason == LABEL_OUT_OF_RANGE and expr != CONTEMPT:
                logger.warning("%s: expression %d is outside 0..10; the record is excluded", exp_path, expr)
            return self.exclude(rec, reason)
        rec.emotion, rec.emotion_origin = emotion, "gt"
        if image is None:
            return self.exclude(rec, IMAGE_MISSING)
        if self.config.check_images:
            from PIL import Image, UnidentifiedImageError

            img_path = self.root / folder / "images" / image
            problem = check_image(img_path)
            if problem is not None:
                logger.warning("%s: %s; the record is excluded (%s); re-extract the file from the release archive",
                               img_path, problem[1], problem[0])
                rec.meta["image_error"] = problem[1]
                return self.exclude(rec, problem[0])
            try:
                with Image.open(img_path) as im:
                    w, h = im.size
            except (UnidentifiedImageError, OSError) as e:
                rec.meta["image_error"] = f"{type(e).__name__}: {e}"
                return self.exclude(rec, IMAGE_UNDECODABLE)
            rec.bbox = [0.0, 0.0, float(w), float(h)]
        return rec


def _numbers(column: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> tuple[Any, Any]:
    """A CSV text column as numbers: ``(numpy values, numpy mask of rows that parsed)``; float: NaN, int: 0 where
    not. Vectorised cast; a column that fails to cast is parsed row by row (as Python's ``int``/``float`` do)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pc.cast(column, kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        conv = int if pa.types.is_integer(kind) else float
        arr = pa.array([_to_number(v, conv) for v in column.to_pylist()], kind)
    ok = np.asarray(arr.is_valid(), dtype=bool)
    values = np.asarray(pc.fill_null(arr, 0 if pa.types.is_integer(kind) else float("nan")))
    return values, ok


_DECIMAL = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


def _landmark_values(column: pa.Array | pa.ChunkedArray) -> tuple[Any, Any, Any]:
    """The ``facial_landmarks`` column -> ``(flat float64 values of the rows with landmarks, has landmarks, bad)``.

    Vectorised: split on ``;``, one cast of all tokens. A row is *bad* (left to the per-row path, which decides)
    when it does not hold exactly 136 plain decimal tokens; null (empty) rows have no landmarks.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    parts = pc.split_pattern(arr, ";")
    lengths = np.asarray(pc.fill_null(pc.list_value_length(parts), 0))
    valid = np.asarray(arr.is_valid(), dtype=bool)
    has = valid & (lengths == N_LANDMARK_VALUES)
    bad = valid & ~has
    for _ in range(2):
        chosen = parts if has.all() else parts.filter(pa.array(has))
        tokens = pc.list_flatten(chosen)
        try:
            return np.asarray(pc.cast(tokens, pa.float64())), has, bad
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            odd = pc.invert(pc.match_substring_regex(tokens, _DECIMAL))
            rows = np.flatnonzero(has)[np.unique(np.asarray(pc.list_parent_indices(chosen).filter(odd)))]
            has[rows] = False
            bad[rows] = True
    bad |= has  # tokens that look decimal yet do not cast (overflow, ...): every row to the per-row path
    return np.zeros(0), np.zeros_like(has), bad
