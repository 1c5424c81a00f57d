"""``fea20k materialize``: rebuild the faces of an annotations-only release from the user's own copies of the corpora.

Two kinds of release are understood:

* a fea20k release folder (ours, from ``fea20k publish``): its ``default`` config's reference columns
  (``image_source``, ``image_path``, ``image_frame``) and source geometry (``landmarks``, ``landmark_scheme``,
  ``bbox``, ``meta["aligned"]``) go through the same ``faces.align`` stage the build used, so the crops match;
* the authors' Facial-R1 / FEA-20K JSONL (a ``.jsonl`` file, or a folder of them), read with the
  ``ingest.facialr1_jsonl`` adapter. Those rows carry no landmarks and the authors trained on the images as they
  are, so they pass through ``faces.align`` as already-aligned images (resize + RGB only).

``--root NAME=PATH`` maps each source name of the release (a JSONL row's ``dataset``) to the folder where the user's
copy of that corpus unpacked. The output is a local dataset folder in the same Hub layout, with an ``image`` column;
rows whose image cannot be found (no ``--root`` for their source, missing or undecodable file) are left out and
listed in ``<out>/missing.tsv`` (id, reason).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fea20k.errors import Fea20kUserError
from fea20k.publish.local import building_dir
from fea20k.publish.release import CONFIG_SPLITS, SPLIT_DIRS, ReleaseWriter
from fea20k.record import FaceRecord, ImageRef, Rationale
from fea20k.stage import StageContext, get_stage_class
from fea20k.workspace import init_workspace


logger = logging.getLogger(__name__)

CHUNK = 256
MISSING_FILE = "missing.tsv"


@dataclass
class MaterializeSummary:
    folder: Path
    rows: dict[str, int]
    missing: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)


def parse_roots(specs: list[str]) -> dict[str, Path]:
    """``["rafdb=/data/RAF-DB/basic", ...]`` -> {name: path}; a malformed entry is a user error."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise Fea20kUserError(f"--root {spec!r}: expected NAME=PATH, e.g. --root rafdb=/data/RAF-DB/basic")
        out[name] = Path(path).expanduser().resolve()
    return out


def records_from_release(folder: Path) -> Iterator[tuple[str, FaceRecord]]:
    """(hf split, record) for every row of a fea20k release folder's ``default`` config."""
    for split in CONFIG_SPLITS["default"]:
        for path in sorted((folder / SPLIT_DIRS[split]).glob(f"{split}-*.parquet")):
            pf = pq.ParquetFile(path)
            info = json.loads((pf.schema_arrow.metadata or {}).get(b"huggingface", b"{}"))
            names = info.get("info", {}).get("features", {}).get("emotion", {}).get("names", [])
            cols = [c for c in pf.schema_arrow.names if c != "image"]
            for batch in pf.iter_batches(columns=cols, batch_size=CHUNK):
                for row in batch.to_pylist():
                    yield split, record_from_row(row, names)


def record_from_row(row: dict[str, Any], emotions: list[str]) -> FaceRecord:
    """A release row (reference columns) back to a record."""
    present = set(row.get("aus") or [])
    unknown = set(row.get("aus_unknown") or [])
    coded = list(row.get("au_coded") or [])
    aus: dict[int, int | None] = {a: (1 if a in present else None if a in unknown else 0)
                                  for a in sorted(present | unknown | set(coded))}
    emo = row.get("emotion")
    rationale = None
    if row.get("rationale") is not None or row.get("annotator") is not None:
        rationale = Rationale(text=row.get("rationale"), annotator=row.get("annotator") or "",
                              backend=row.get("backend") or "", model=row.get("model"),
                              prompt_hash=row.get("prompt_hash"), gold_in_prompt=bool(row.get("gold_in_prompt")),
                              attempts=row.get("attempts") or 0)
    image = ImageRef(row["image_source"], row["image_path"], row.get("image_frame")) if row.get("image_path") else None
    return FaceRecord(
        id=row["id"], source=row["source"], split=row.get("split"), subject=row.get("subject"), round=row.get("round"),
        image=image, bbox=row.get("bbox"), landmarks=row.get("landmarks"), landmark_scheme=row.get("landmark_scheme"),
        emotion=emotions[emo] if emo is not None else None, emotion_origin=row.get("emotion_origin"), aus=aus,
        au_coded=coded, au_intensity={d["au"]: d["value"] for d in row.get("au_intensity") or []},
        aus_origin=row.get("aus_origin"), rationale=rationale, accepted=True,
        scores={d["name"]: d["value"] for d in row.get("scores") or []},
        provenance={d["stage"]: d["value"] for d in row.get("provenance") or []},
        meta=json.loads(row["meta"]) if row.get("meta") else {},
    )


def _jsonl_records(release: Path, ws_root: Path, roots: dict[str, Path]) -> Iterator[tuple[str, FaceRecord]]:
    cls = get_stage_class("ingest.facialr1_jsonl")
    root = release if release.is_dir() else release.parent
    cfg: dict[str, Any] = {"source": "facialr1", "root": str(root), "roots": {name: name for name in roots}}
    if release.is_file():
        cfg["files"] = [release.name]
    ctx = StageContext(workspace_root=ws_root, round=0, stage_key="ingest/facialr1")
    adapter = cls(cfg, ctx)
    for rec in adapter.iter_records():  # type: ignore[attr-defined]
        if rec.accepted is not False:
            rec.meta["aligned"] = True  # the authors used these images as they are (no landmarks in the JSONL)
        yield ("test" if rec.split == "test" else "train"), rec


def materialize(release: Path, roots: dict[str, Path], out_dir: Path, align_config: dict[str, Any] | None = None,
                shard_max_bytes: int = 256 << 20) -> MaterializeSummary:
    """Rebuild the faces of ``release`` from ``roots`` into the dataset folder ``out_dir``."""
    release = Path(release)
    is_jsonl = release.suffix == ".jsonl" or (release.is_dir() and not (release / "README.md").is_file()
                                              and any(release.glob("*.jsonl")))
    if not is_jsonl and not (release / "README.md").is_file():
        raise Fea20kUserError(f"{release}: neither a fea20k release folder (README.md + data/) nor Facial-R1 JSONL")
    for name, path in roots.items():
        if not path.is_dir():
            raise Fea20kUserError(f"--root {name}={path}: not a folder")
    from fea20k.vocab import load_vocab

    vocab = load_vocab()
    out_dir = Path(out_dir)
    summary = MaterializeSummary(folder=out_dir, rows={})
    with tempfile.TemporaryDirectory(prefix="fea20k-materialize-") as wsd:
        ws_root = Path(wsd) / "ws"
        _scratch_workspace(ws_root, roots)
        align = get_stage_class("faces.align")(align_config or {},
                                              StageContext(workspace_root=ws_root, round=0, stage_key="faces.align"))
        align.load()
        with building_dir(out_dir) as tmp:
            writer = ReleaseWriter(tmp, vocab.emotions, include_images=True, shard_max_bytes=shard_max_bytes)
            source = _jsonl_records(release, ws_root, roots) if is_jsonl else records_from_release(release)
            try:
                buf: list[tuple[str, FaceRecord]] = []
                for item in source:
                    buf.append(item)
                    if len(buf) >= CHUNK:
                        _flush(align, buf, roots, writer, summary)
                        buf = []
                _flush(align, buf, roots, writer, summary)
                shards = writer.finish()
            except BaseException:
                writer.abort()
                raise
            finally:
                align.close()
            import yaml

            front = {"configs": writer.configs_yaml(), "dataset_info": writer.dataset_info(shards)}
            body = (f"# {release.name}, materialized\n\nFaces rebuilt locally from your own copies of the corpora "
                    "by `fea20k materialize`. They remain under the source corpora's licences: do not redistribute "
                    f"this folder. Rows whose image could not be found are listed in `{MISSING_FILE}`.\n")
            (tmp / "README.md").write_text("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n" + body,
                                           encoding="utf-8")
            (tmp / MISSING_FILE).write_text("".join(f"{i}\t{r}\n" for i, r in summary.missing), encoding="utf-8")
    summary.rows = {k: v for k, v in writer.rows.items() if v}
    return summary


def _scratch_workspace(ws_root: Path, roots: dict[str, Path]) -> None:
    """A throwaway workspace whose sources are the user's corpus roots (faces.align resolves images through it)."""
    init_workspace(ws_root)
    lines = ["[workspace]", 'name = "materialize"', ""]
    for name, path in roots.items():
        lines += [f"[sources.{json.dumps(name)}]", 'adapter = "materialize"', f"root = {json.dumps(str(path))}", ""]
    (ws_root / "fea20k.toml").write_text("\n".join(lines), encoding="utf-8")


def _flush(align: Any, buf: list[tuple[str, FaceRecord]], roots: dict[str, Path], writer: ReleaseWriter,
           summary: MaterializeSummary) -> None:
    todo: list[tuple[str, FaceRecord]] = []
    for split, rec in buf:
        if rec.accepted is False:
            summary.missing.append((rec.id, ",".join(rec.reasons) or "excluded"))
        elif rec.image is None or rec.image.root not in roots:
            src = rec.image.root if rec.image else rec.source
            summary.missing.append((rec.id, f"no --root for source {src}"))
        else:
            rec.face = None
            todo.append((split, rec))
    if not todo:
        return
    out = align.run_batch([rec for _, rec in todo])
    routed: dict[str, list[FaceRecord]] = {"train": [], "test": []}
    for (split, _), rec in zip(todo, out, strict=True):
        if rec.excluded or rec.face is None:
            summary.missing.append((rec.id, ",".join(rec.reasons) or "no face"))
            continue
        routed[split].append(rec)
    for split, recs in routed.items():
        writer.add(split, recs)
