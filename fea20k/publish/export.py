"""Training exports of a round: the Facial-R1 JSONL schema, and chat messages for TRL / LLaMA-Factory.

Only accepted rows of the training side are exported: the sources' train and validation splits (the release's
``train`` split). Test rows are never written, whatever their verdict. A human reviewer's decisions
(``reviews/round-N.jsonl``) are honoured as in the release: a reject leaves the row out, an edited rationale is the
text exported (:func:`~fea20k.publish.reviews.apply_edit`).

``facial-r1`` (``docs/facial-r1.md`` §6)::

    <out>/<source>.jsonl        one row per sample: id, dataset, image, question, AUs ["AU1", ...], labels
                                [emotion] ([] for AU-only sources), description (the rationale), meta_info, and
                                prompt: the exact user-turn text of the prompt contract (fea20k.prompt), without
                                the ground-truth block, which the trainers use verbatim
    <out>/images/<source>/...   the aligned crops; ``image`` is relative to this per-dataset folder
    <out>/config.json           statistics file (§6.3): per JSONL file, the fraction of rows carrying each AU and
                                each label, 4 decimals
    <out>/train.yaml            SFT data configuration (§6.2): json_path, image_root, sampling_strategy "all"
    <out>/prompt_contract.json  which prompt contract rendered ``prompt`` (id, template, version)

``messages`` (LLaMA-Factory "sharegpt" style, also read by TRL's chat-template collators)::

    <out>/messages.jsonl        {"id", "messages": [{"role": "user", "content": "<image>" + prompt},
                                 {"role": "assistant", "content": rationale}], "images": ["images/<source>/..."]}
    <out>/images/<source>/...
    <out>/dataset_info.json     the LLaMA-Factory dataset description of messages.jsonl
    <out>/prompt_contract.json

The prompt contract is the one of the annotator that will ask the trained model (the recipe's
``annotate.regenerate`` annotator, ``facial-r1`` by default; ``fea20k export --annotator`` names another), so the
text the model trains on is the text it is asked with in the next round.

Rows whose aligned crop is missing are not exported; their ids are listed in ``<out>/missing_faces.txt``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fea20k.errors import Fea20kUserError, StageError
from fea20k.io import StageOutput, atomic_write_json
from fea20k.prompt import CONTRACT_FILE, DEFAULT_QUESTION, PromptContract
from fea20k.publish.local import building_dir, upstream_dir
from fea20k.publish.reviews import apply_edit, load_reviews
from fea20k.record import FaceRecord
from fea20k.workspace import Workspace


logger = logging.getLogger(__name__)

FORMATS = ("facial-r1", "messages")
TRAIN_SPLITS = ("train", "val")


@dataclass
class ExportSummary:
    folder: Path
    format: str
    rows: Counter[str] = field(default_factory=Counter)  # per source
    missing: list[str] = field(default_factory=list)
    skipped_test: int = 0
    reviewer_edits: int = 0  # rows exported with the rationale a reviewer edited
    files: dict[str, Path] = field(default_factory=dict)  # what a trainer reads: data, images, stats


def image_relpath(rec: FaceRecord) -> str:
    """The crop's path inside ``images/<source>/``: the id without its source prefix, ``#frame`` as ``_f<frame>``."""
    prefix = f"{rec.source}/"
    rel = rec.id[len(prefix):] if rec.id.startswith(prefix) else rec.id
    return rel.replace("#", "_f") + ".jpg"


def facial_r1_row(rec: FaceRecord, contract: PromptContract | None = None) -> dict[str, Any]:
    """One Facial-R1 JSONL row (§6.1), with ``prompt`` (the contract's user text, no ground-truth block) when a
    contract is given."""
    rat = rec.rationale
    img = rec.image
    question = contract.question(rec.meta.get("question")) if contract else DEFAULT_QUESTION
    row: dict[str, Any] = {
        "id": rec.id,
        "dataset": rec.source,
        "image": image_relpath(rec),
        "question": question,
        "AUs": [f"AU{k}" for k in rec.present_aus()],
        "labels": [rec.emotion] if rec.emotion else [],
        "description": rat.text if rat else "",
        "meta_info": {
            "split": rec.split,
            "subject": rec.subject,
            "round": rec.round,
            "au_coded": sorted(rec.au_coded),
            "aus_unknown": sorted(k for k, v in rec.aus.items() if v is None),
            "emotion_origin": rec.emotion_origin,
            "aus_origin": rec.aus_origin,
            "annotator": rat.annotator if rat else None,
            "backend": rat.backend if rat else None,
            "model": rat.model if rat else None,
            "prompt_hash": rat.prompt_hash if rat else None,
            "gold_in_prompt": rat.gold_in_prompt if rat else None,
            "attempts": rat.attempts if rat else None,
            "image_source": img.root if img else None,
            "image_path": img.path if img else None,
            "image_frame": img.frame if img else None,
            "prompt_contract": contract.id if contract else None,
        },
    }
    if contract is not None:
        row["prompt"] = contract.user_text(contract.inputs(rec, gold=False))
    return row


def statistics(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Fractions of rows carrying each AU and each label, 4 decimals; AUs in numeric, labels in name order."""
    n = len(rows) or 1
    aus: Counter[str] = Counter()
    emos: Counter[str] = Counter()
    for r in rows:
        aus.update(set(r["AUs"]))
        emos.update(set(r["labels"]))
    return {
        "AUs": {k: round(aus[k] / n, 4) for k in sorted(aus, key=lambda a: int(a[2:]))},
        "emotions": {k: round(emos[k] / n, 4) for k in sorted(emos)},
    }


def iter_train_records(ws: Workspace, round_: int, summary: ExportSummary) -> Any:
    """Accepted, not human-rejected records of the training side of round ``round_``'s release inputs."""
    d = upstream_dir(ws, round_)
    if not (d / "_SUCCESS.json").is_file():
        raise Fea20kUserError(f"round {round_}: {d.name} has not completed; run `fea20k build --round {round_}`")
    reviews = load_reviews(ws.root, round_)
    for rec in StageOutput([d]).iter_records():
        if rec.accepted is not True:
            continue
        if rec.split not in TRAIN_SPLITS:
            summary.skipped_test += 1
            continue
        review = reviews.get(rec.id)
        if review is not None and review.decision == "reject":
            continue
        summary.reviewer_edits += apply_edit(rec, review)
        yield rec


def export_round(ws: Workspace, round_: int, fmt: str, out_dir: Path | None = None,
                 annotator: str | None = None) -> ExportSummary:
    """Write the ``fmt`` export of round ``round_`` into ``out_dir`` (default ``exports/round-N/<fmt>``), its prompts
    rendered through ``annotator``'s contract (default: the annotator that regenerates in round N+1)."""
    if fmt not in FORMATS:
        raise Fea20kUserError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
    out_dir = Path(out_dir) if out_dir is not None else ws.root / "exports" / f"round-{round_}" / fmt
    summary = ExportSummary(folder=out_dir, format=fmt)
    contract = contract_for_workspace(ws, annotator)
    return export_records(iter_train_records(ws, round_, summary), out_dir, fmt, summary=summary, contract=contract)


def contract_for_workspace(ws: Workspace, annotator: str | None = None) -> PromptContract:
    """The prompt contract a model trained on this workspace's exports is asked with: ``annotator``'s, else the
    recipe's ``annotate.regenerate`` annotator's (``facial-r1`` when the recipe does not name one)."""
    from fea20k.vocab import load_vocab

    name = annotator or str(ws.recipe.stages.get("annotate.regenerate", {}).get("annotator") or "facial-r1")
    return PromptContract.named(ws.data_file("annotators"), name, load_vocab(ws.data_file("validators")))


def export_records(records: Iterable[FaceRecord], out_dir: Path, fmt: str, *, combined: str | None = None,
                   summary: ExportSummary | None = None, contract: PromptContract | None = None) -> ExportSummary:
    """Write ``records`` (already filtered: accepted training rows) in the ``fmt`` layout of the module docstring.

    The folder is written aside and moved into place when complete (an earlier ``out_dir`` is replaced). Records are
    streamed: only each row's AU and label names are held for the statistics. Rows without an aligned crop are left
    out and listed in ``missing_faces.txt``. ``combined`` (``facial-r1`` only): also write ``<combined>.jsonl``, every
    row with its ``image`` relative to ``images/`` (``<source>/<path>``), and its statistics in ``config.json``, for
    single-file trainers. A test row is refused (StageError): callers filter them out, this is the last defence.
    ``summary.files`` gives the paths a trainer reads: ``data`` (the combined file, else ``train.yaml``; for
    ``messages``, ``messages.jsonl``), ``images`` (``images/``; for ``messages`` the folder itself, as its image paths
    start with ``images/``) and ``stats`` (``config.json``; absent for ``messages``). ``contract``: the prompt
    contract whose user text every row carries (``prompt``; the ``messages`` user turn), recorded in
    ``prompt_contract.json``; None writes the bare question (data for trainers with prompts of their own).
    """
    if fmt not in FORMATS:
        raise Fea20kUserError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
    out_dir = Path(out_dir)
    summary = summary if summary is not None else ExportSummary(folder=out_dir, format=fmt)
    with building_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        per_source = _write_rows(records, tmp, fmt, combined, summary, contract)
        if contract is not None:
            atomic_write_json(tmp / CONTRACT_FILE, contract.describe())
        if fmt == "facial-r1":
            stats = {f"{src}.jsonl": statistics(rows) for src, rows in sorted(per_source.items())}
            if combined is not None:
                (tmp / f"{combined}.jsonl").touch()
                stats[f"{combined}.jsonl"] = statistics([r for rows in per_source.values() for r in rows])
            (tmp / "config.json").write_text(json.dumps(stats, indent=1, sort_keys=True), encoding="utf-8")
            (tmp / "train.yaml").write_text(_train_yaml(sorted(per_source)), encoding="utf-8")
            data = f"{combined}.jsonl" if combined is not None else "train.yaml"
            summary.files = {"data": out_dir / data,
                             "images": out_dir / "images", "stats": out_dir / "config.json"}
        else:
            (tmp / "messages.jsonl").touch()
            info = {"fea20k": {"file_name": "messages.jsonl", "formatting": "sharegpt",
                               "columns": {"messages": "messages", "images": "images"},
                               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                        "assistant_tag": "assistant"}}}
            (tmp / "dataset_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
            summary.files = {"data": out_dir / "messages.jsonl", "images": out_dir}
        if summary.missing:
            (tmp / "missing_faces.txt").write_text("\n".join(summary.missing) + "\n", encoding="utf-8")
            logger.warning("%d accepted train row(s) have no aligned crop and were not exported; see "
                           "missing_faces.txt", len(summary.missing))
    return summary


def _write_rows(records: Iterable[FaceRecord], tmp: Path, fmt: str, combined: str | None,
                summary: ExportSummary, contract: PromptContract | None) -> dict[str, list[dict[str, Any]]]:
    """Write the crops and the JSONL file(s) of ``records`` into ``tmp``; the AU and label names per source."""
    per_source: dict[str, list[dict[str, Any]]] = {}
    files: dict[str, Any] = {}

    def write(name: str, obj: dict[str, Any]) -> None:
        if name not in files:
            files[name] = (tmp / name).open("w", encoding="utf-8")
        files[name].write(json.dumps(obj, ensure_ascii=False) + "\n")

    try:
        for rec in records:
            if rec.split == "test":
                raise StageError(f"refusing to export test row {rec.id} for training")
            if rec.face is None:
                summary.missing.append(rec.id)
                continue
            row = facial_r1_row(rec, contract)
            if ".." in Path(row["image"]).parts or Path(row["image"]).is_absolute():
                raise Fea20kUserError(f"record {rec.id}: its id does not give a safe relative image path")
            img = tmp / "images" / rec.source / row["image"]
            img.parent.mkdir(parents=True, exist_ok=True)
            img.write_bytes(rec.face)
            summary.rows[rec.source] += 1
            if fmt == "facial-r1":
                write(f"{rec.source}.jsonl", row)
                per_source.setdefault(rec.source, []).append({"AUs": row["AUs"], "labels": row["labels"]})
                if combined is not None:
                    write(f"{combined}.jsonl", {**row, "image": f"{rec.source}/{row['image']}"})
            else:
                write("messages.jsonl", messages_row(row))
    finally:
        for f in files.values():
            f.close()
    return per_source


def messages_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Facial-R1 row as a chat sample: user turn = image + the contract's prompt (else the question), assistant turn
    = the rationale."""
    return {
        "id": row["id"],
        "messages": [
            {"role": "user", "content": "<image>" + (row.get("prompt") or row["question"])},
            {"role": "assistant", "content": row["description"]},
        ],
        "images": [f"images/{row['dataset']}/{row['image']}"],
    }


def _train_yaml(sources: list[str]) -> str:
    lines = ["datasets:"]
    for src in sources:
        lines += [f"  - json_path: {src}.jsonl", f"    image_root: images/{src}", "    sampling_strategy: all"]
    return "\n".join(lines) + "\n"
