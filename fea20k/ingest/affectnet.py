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
from dataclasses import dataclass
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
        images listed more than once; their rows are held as records (boxes and landmarks as parsed), then resolved by
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

    def _repeated(self, images: str, paths: list[Path]) -> set[str]:
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
            return set()
        counts = pc.value_counts(pa.chunked_array(chunks, pa.string()))
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1)).drop_null()
        repeated = repeated.filter(pc.not_equal(repeated, ""))  # empty paths get line ids
        if not len(repeated):
            return set()
        logger.info("%s: %d image(s) listed more than once; each becomes one record", self.source, len(repeated))
        return {f"{self.source}/{images}/{k}" for k in repeated.to_pylist()}

    # ------------------------------------------------------------------------------------------- CSV reading

    def _csv_tables(self, path: Path, images: str, split: str, split_raw: str,
                    index: DirIndex | None, repeats: _Repeats) -> Iterator[pa.Table]:
        """Stream ``path`` block by block. Rows are built column-wise (:meth:`_assemble`), odd ones (non-numeric
        label or box, bad landmarks) included; rows with the wrong column count, which the CSV reader cannot split,
        go through :meth:`_malformed`; all are put back in file order."""
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

    def _assemble(self, path: Path, batch: pa.RecordBatch, landmarks: _Landmarks, bad: list[tuple[int, str]],
                  state: dict[str, int], images: str, split: str, split_raw: str, index: DirIndex | None,
                  repeats: _Repeats) -> Iterator[pa.Table]:
        """One block's table: its rows built column-wise (:meth:`_block_table`), the rows with the wrong column
        count (``bad``, from the CSV reader) put back at their line, the rows of images listed more than once held
        in ``repeats``."""
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
            table, exact = self._block_table(path, batch, landmarks, lines, images, split, split_raw, index)
            held = repeats.mask(table.column("id"))
            if held.any():
                rows = np.flatnonzero(held)
                for rec, i in zip(exact.records(table, rows), rows.tolist(), strict=True):
                    repeats.hold(rec, path, int(lines[i]))
                table, lines = table.filter(pa.array(~held)), lines[~held]
            tables.append(table)
            order.append(lines)
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

    def _block_table(self, path: Path, batch: pa.RecordBatch, landmarks: _Landmarks, lines: Any, images: str,
                     split: str, split_raw: str, index: DirIndex | None) -> tuple[pa.Table, _Exact]:
        """Every row of ``batch`` as a table, built column-wise, and the exact (float64) boxes and landmarks of its
        rows (:class:`_Exact`, for the rows that are held as records)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from fea20k.schema import IMAGE_REF

        rows = self._parse_rows(path, batch, landmarks, lines, images)
        n = batch.num_rows
        relpath = pc.binary_join_element_wise(images, rows.sub, "/")
        reason, image_path, image_error = self._check_images(path, relpath, rows.reason, index)
        x, y, w, h = rows.box
        positive = rows.reach & (w > 0) & (h > 0)
        nonpositive = rows.reach & ~positive
        if nonpositive.any():
            self.stats.add("bbox_nonpositive", int(nonpositive.sum()))
        bbox = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(positive.astype(np.int32) * 4)]).astype(np.int32)),
            pa.array(np.stack([x, y, w, h], axis=1)[positive].reshape(-1).astype(np.float32)),
            mask=pa.array(~positive))
        key = _stems(rows.sub)
        image = pa.StructArray.from_arrays([pa.repeat(pa.scalar(self.source), n), image_path,
                                            pa.nulls(n, pa.int32())], fields=list(IMAGE_REF))
        table = table_of(n, {
            "id": pc.binary_join_element_wise(f"{self.source}/{images}", key, "/"),
            "source": self.source, "split": split, "image": image,
            "bbox": bbox, "landmarks": nested_points(rows.flat, rows.has, N_LANDMARK_VALUES // 2),
            "landmark_scheme": pc.if_else(pa.array(rows.has), "ibug68", pa.scalar(None, pa.string())),
            "emotion": rows.emotion,
            "emotion_origin": pc.if_else(rows.emotion.is_valid(), "gt", pa.scalar(None, pa.string())),
            **exclusion_columns(reason, self.name),
            "meta": self._meta(rows, key, nonpositive, image_error, split_raw),
        })
        return table, _Exact(rows.box, rows.flat, rows.has)

    def _parse_rows(self, path: Path, batch: pa.RecordBatch, landmarks: _Landmarks, lines: Any,
                    images: str) -> _Rows:
        """The columns of ``batch`` parsed, and each row's first problem, in the order a row is judged: expression
        not an integer, empty path, bad landmarks (label_parse_error), face box not numeric (bad_bbox), then the
        label (:func:`classify_expression`). One warning per odd row, naming file and line."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        sub = _image_paths(batch.column("subDirectory_filePath"), images)
        empty = np.asarray(pc.fill_null(pc.equal(pc.binary_length(sub), 0), True), dtype=bool)
        if empty.any():  # an id per line, not one shared by every empty path
            sub = pc.replace_with_mask(sub, pa.array(empty), pa.array(
                [f"_malformed/{path.name}/{v}" for v in lines[empty].tolist()], pa.string()))
        expr, expr_ok = _numbers(batch.column("expression"), pa.int64())
        box = [_numbers(batch.column(c), pa.float64()) for c in ("face_x", "face_y", "face_width", "face_height")]
        box_ok = np.logical_and.reduce([ok for _, ok in box])
        lnd_bad = np.zeros(len(expr), dtype=bool)
        lnd_bad[list(landmarks.problems)] = True
        labelled = expr_ok & ~empty
        reach = labelled & ~lnd_bad & box_ok
        in_range = (expr >= 0) & (expr <= 10)
        slot = pa.array(np.where(in_range, expr, 11))
        emotions, reasons = zip(*(classify_expression(raw, self.config.classes) for raw in range(11)), strict=True)
        reach_arr = pa.array(reach)
        emotion = pc.if_else(reach_arr, pc.take(pa.array([*emotions, None], pa.string()), slot),
                             pa.scalar(None, pa.string()))
        reason = pc.if_else(reach_arr, pc.take(pa.array([*reasons, LABEL_OUT_OF_RANGE], pa.string()), slot),
                            pc.if_else(pa.array(labelled & ~lnd_bad), BAD_BBOX, LABEL_PARSE_ERROR))
        raw_expr = batch.column("expression")
        for i in np.flatnonzero(~labelled | ~in_range | lnd_bad | ~box_ok).tolist():  # the odd rows, in order
            if not expr_ok[i]:
                warn_line(path, int(lines[i]), f"expression {raw_expr[i].as_py()!r} is not an integer")
                continue
            if empty[i]:
                warn_line(path, int(lines[i]), "empty subDirectory_filePath")
                continue
            if not in_range[i]:
                warn_line(path, int(lines[i]), f"expression {int(expr[i])} is outside 0..10")
            if lnd_bad[i] or not box_ok[i]:
                warn_line(path, int(lines[i]), landmarks.problems.get(i, "face box is not numeric"))
        flat, has = landmarks.flat, landmarks.has
        if (has & ~labelled).any():  # a row judged before its landmarks keeps none
            flat, has = flat.reshape(-1, N_LANDMARK_VALUES)[labelled[has]].reshape(-1), has & labelled
        va = [_numbers(batch.column(c), pa.float64())[0] for c in ("valence", "arousal")]
        return _Rows(sub, expr, expr_ok, raw_expr, [v for v, _ in box], va, flat, has, emotion, reason, reach)

    def _check_images(self, path: Path, relpath: pa.Array, reason: pa.Array, index: DirIndex | None
                      ) -> tuple[pa.Array, pa.Array, object]:
        """``(reason, image path, image_error JSON fragment)``: the rows without a reason so far get their image
        looked up (the real name on disk: ``.JPG``) and checked (``_common.check_images``, on threads); one warning
        for the block names the first unusable file."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if index is None:
            return reason, relpath, ""
        n = len(relpath)
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
        image_error: object = ""
        if bad:
            details = np.full(n, None, dtype=object)
            for k, (code_reason, detail) in bad:
                codes[rows[found[k]]] = 1 if code_reason == IMAGE_MISSING else 2
                details[rows[found[k]]] = detail
            detail_arr = pa.array(details, pa.string())
            image_error = pc.if_else(detail_arr.is_valid(), pc.binary_join_element_wise(
                ', "image_error": ', _json_text(detail_arr), ""), "")
            logger.warning("%s: %d image(s) not usable (first: %s: %s); those records are excluded "
                           "(image_undecodable / image_missing); re-extract them from the release archive",
                           path, len(bad), self.root / real_found[bad[0][0]], bad[0][1][1])
        reason = pc.coalesce(reason, pc.take(pa.array([None, IMAGE_MISSING, IMAGE_UNDECODABLE], pa.string()),
                                             pa.array(codes)))
        return reason, image_path, image_error

    def _meta(self, rows: _Rows, key: pa.Array, nonpositive: Any, image_error: object, split_raw: str) -> pa.Array:
        """The ``meta`` JSON column: affectnet_key, valence/arousal (-2 and unparsed -> null), raw_label (the text
        of an expression that is not an integer), bbox_raw (a box that is not positive), image_error."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        valence, arousal = (pa.array(v, mask=np.isnan(v) | (v == NOT_APPLICABLE)) for v in rows.va)
        raw_label = pc.cast(pa.array(rows.expr), pa.string())
        if not rows.expr_ok.all():
            raw_label = pc.if_else(pa.array(rows.expr_ok), raw_label, _json_text(rows.raw_expr))
        no_box: object = ""
        if nonpositive.any():
            raw_box = pc.binary_join_element_wise(*(json_float(pa.array(v)) for v in rows.box), ", ")
            raw_box = pc.binary_join_element_wise(', "bbox_raw": [', raw_box, "]", "")
            no_box = pc.if_else(pa.array(nonpositive), raw_box, "")
        return pc.binary_join_element_wise(
            '{"affectnet_key": ', _json_text(key), ', "arousal": ', json_float(arousal),
            no_box,
            f', "corpus": "{self.corpus}"', image_error, ', "raw_label": ', raw_label,
            f', "split_raw": {json.dumps(split_raw)}, "valence": ', json_float(valence), "}", "")

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


class _Repeats:
    """The ids listed more than once (from :meth:`AffectNetCsv._repeated`, still running when this is made: the
    first use waits for it) and their records, held until the end."""

    def __init__(self, pending: Future[set[str]]) -> None:
        self._pending: Future[set[str]] | None = pending
        self._ids: set[str] = set()
        self._id_array: pa.Array | None = None
        self.held: dict[str, list[FaceRecord]] = {}

    def _ready(self) -> None:
        if self._pending is not None:
            self._ids = self._pending.result()
            self._pending = None

    def mask(self, ids: pa.Array) -> Any:
        """Boolean numpy mask of the ``ids`` (a string array) that repeat: their rows are held, not emitted."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        self._ready()
        if not self._ids:
            return np.zeros(len(ids), dtype=bool)
        if self._id_array is None:
            self._id_array = pa.array(sorted(self._ids), pa.string())
        return np.asarray(pc.fill_null(pc.is_in(ids, value_set=self._id_array), False), dtype=bool)

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


@dataclass
class _Landmarks:
    """The ``facial_landmarks`` column of one CSV block (:func:`_landmark_values`): ``flat`` float64 values of the
    rows that have landmarks (``has``, a numpy mask), and ``problems`` {row: why its landmarks are not usable}."""

    flat: Any
    has: Any
    problems: dict[int, str]


@dataclass
class _Rows:
    """One CSV block's columns as :meth:`AffectNetCsv._parse_rows` reads them (one entry per row): image path under
    the image folder (line ids for empty ones), expression (numpy, with ``expr_ok``; ``raw_expr`` its text), face
    box x, y, w, h and valence, arousal (float64, NaN where not a number), landmarks, and the row's emotion and
    first reason; ``reach``: rows past every parse check, which get their box and label."""

    sub: pa.Array
    expr: Any
    expr_ok: Any
    raw_expr: pa.Array
    box: list[Any]
    va: list[Any]
    flat: Any
    has: Any
    emotion: pa.Array
    reason: pa.Array
    reach: Any


@dataclass
class _Exact:
    """A block's boxes and landmarks as parsed (float64): the records of rows held for
    ``_common.resolve_duplicates`` carry these, not their float32 copies in the table."""

    box: list[Any]
    flat: Any
    has: Any

    def records(self, table: pa.Table, rows: Any) -> list[FaceRecord]:
        """The rows ``rows`` (numpy indices) of ``table`` as records."""
        import numpy as np
        import pyarrow as pa

        from fea20k.schema import from_arrow

        recs = from_arrow(table.take(pa.array(rows)))
        at = np.cumsum(self.has) - 1  # row -> its landmarks' position in flat
        for rec, i in zip(recs, rows.tolist(), strict=True):
            if rec.bbox is not None:
                rec.bbox = [float(v[i]) for v in self.box]
            if rec.landmarks is not None:
                k = int(at[i]) * N_LANDMARK_VALUES
                rec.landmarks = self.flat[k:k + N_LANDMARK_VALUES].reshape(-1, 2).tolist()
        return recs


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
    record: rows with an empty path get line ids."""
    return _stems(_image_paths(column, images))


def _to_number(value: str | None, kind: type) -> float | int | None:
    try:
        number = kind(value) if value is not None else None
    except ValueError:
        return None
    if kind is int and number is not None and not -(2**63) <= number < 2**63:
        return None  # not an int64 (the expression column's type), so not an expression id either
    return number


def _parse_landmark_string(s: str | None) -> Any:
    """One ``facial_landmarks`` value as Python reads it: the 136 values (float64 numpy), ``None`` when empty, or
    why it is not usable (a str)."""
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
    return values


def _json_text(arr: pa.Array) -> pa.Array:
    """Strings -> JSON string literals as ``json.dumps`` writes them (null -> ``null``): vectorised, except in an
    array holding a control character (JSON's ``\\u`` escapes), which is encoded value by value."""
    import numpy as np
    import pyarrow as pa

    if np.asarray(has_control_chars(arr), dtype=bool).any():
        return pa.array(["null" if v is None else json.dumps(v, ensure_ascii=False) for v in arr.to_pylist()],
                        pa.string())
    return json_string(arr)


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
        self._landmarks(rec, ann / f"{sid}_lnd.npy")
        emotion, reason = classify_expression(expr, self.config.classes)
        if reason is not None:
            if reason == LABEL_OUT_OF_RANGE and expr != CONTEMPT:
                logger.warning("%s: expression %d is outside 0..10; the record is excluded", exp_path, expr)
            return self.exclude(rec, reason)
        rec.emotion, rec.emotion_origin = emotion, "gt"
        if image is None:
            return self.exclude(rec, IMAGE_MISSING)
        if self.config.check_images:
            return self._image_box(rec, self.root / folder / "images" / image)
        return rec

    def _landmarks(self, rec: FaceRecord, lnd_path: Path) -> None:
        """``rec``'s 68 landmarks from ``<id>_lnd.npy``; left empty (with a warning or a count) when missing or odd."""
        points = self.read_landmarks_npy(lnd_path, N_LANDMARK_VALUES)
        if points is not None:
            rec.landmarks, rec.landmark_scheme = points, "ibug68"

    def _image_box(self, rec: FaceRecord, img_path: Path) -> FaceRecord:
        """``rec`` with its box, the whole image (the release's crops are faces), or excluded when the image is
        not usable (``_common.check_image``, then the header PIL reads)."""
        from PIL import Image, UnidentifiedImageError

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


def _landmark_values(column: pa.Array | pa.ChunkedArray) -> _Landmarks:
    """The ``facial_landmarks`` column of a block, parsed (runs on a thread, ahead of the block's assembly).

    Vectorised: split on ``;``, one cast of all tokens. A row that does not hold exactly 136 plain decimal tokens is
    parsed by :func:`_parse_landmark_string` (Python's reading decides: a trailing ``;``, spaces, ``inf``); null
    (empty) rows have no landmarks.
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
    flat = None
    for _ in range(2):
        chosen = parts if has.all() else parts.filter(pa.array(has))
        tokens = pc.list_flatten(chosen)
        try:
            flat = np.asarray(pc.cast(tokens, pa.float64()))
            break
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            odd = pc.invert(pc.match_substring_regex(tokens, _DECIMAL))
            rows = np.flatnonzero(has)[np.unique(np.asarray(pc.list_parent_indices(chosen).filter(odd)))]
            has[rows] = False
            bad[rows] = True
    if flat is None:  # tokens that look decimal yet do not cast (overflow, ...): every row parsed by Python
        bad |= has
        has = np.zeros_like(has)
        flat = np.zeros(0)
    problems: dict[int, str] = {}
    fixed: dict[int, Any] = {}
    for i, text in zip(np.flatnonzero(bad).tolist(), arr.filter(pa.array(bad)).to_pylist(), strict=True):
        got = _parse_landmark_string(text)
        if isinstance(got, str):
            problems[i] = got
        elif got is not None:
            fixed[i] = got
    if fixed:
        full = np.zeros((len(has), N_LANDMARK_VALUES))
        full[has] = flat.reshape(-1, N_LANDMARK_VALUES)
        full[list(fixed)] = np.stack(list(fixed.values()))
        has[list(fixed)] = True
        flat = full[has].reshape(-1)
    return _Landmarks(flat, has, problems)
