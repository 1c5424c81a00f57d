"""The ``publish`` stage: the round's local release folder ``<workspace>/releases/round-N/`` in the Hub layout.

:func:`build_release` does the work (the stage and ``fea20k publish`` both call it); :class:`PublishStage` is the
pipeline step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from pydantic import Field

from fea20k import __version__
from fea20k.errors import DiskFullError, Fea20kUserError
from fea20k.io import StageOutput, disk_full_error, is_disk_full
from fea20k.publish.card import (
    SourceFacts,
    blocked_sources,
    card_context,
    load_sources_file,
    render_card,
    source_conventions,
    source_facts,
)
from fea20k.publish.facts import ReleaseFacts, tree_digest
from fea20k.publish.notes import NOTES_FILE, compare, release_digests
from fea20k.publish.release import ReleaseWriter, ShardInfo
from fea20k.publish.reviews import load_reviews, reviews_path
from fea20k.record import FaceRecord
from fea20k.schema import WITHOUT_FACE, from_arrow
from fea20k.stage import AggregateStage, StageConfig, register_stage
from fea20k.workspace import Workspace


logger = logging.getLogger(__name__)

MANIFEST = ".fea20k-release.json"  # hidden: never uploaded nor copied by --to; says how the folder was built
CARD_TEMPLATE = "cards/dataset_card.md.j2"
SOURCES_FILE = "cards/sources.toml"
CURATOR_FOLDERS = ("pipelines", "annotators", "validators", "cards")


class ImagesNotAllowedError(Fea20kUserError):
    """Faces of a source whose licence forbids redistribution were requested without the explicit confirmation."""


@dataclass
class ReleaseSummary:
    """What a build wrote."""

    folder: Path
    round: int
    include_images: bool
    rows: dict[str, int]
    shards: dict[str, list[ShardInfo]]
    notes_summary: str
    blocked: list[str] = field(default_factory=list)  # sources that forced an annotations-only release


def upstream_dir(ws: Workspace, round_: int) -> Path:
    """The output folder of the step before ``publish`` in round ``round_``'s plan."""
    steps = ws.recipe.plan(round_).steps
    if "publish" not in steps or steps.index("publish") == 0:
        raise Fea20kUserError(f"{ws.recipe_path}: round {round_} has no step before 'publish'; add publish after "
                              "validate in [rounds.*] steps")
    return ws.stage_dir(round_, steps[steps.index("publish") - 1])


def image_policy(ws: Workspace, sources: Iterable[str], requested: bool | None, confirmed: Iterable[str],
                 terms_path: Path) -> tuple[bool, list[SourceFacts]]:
    """Decide whether the faces go in. Returns (include, blocked sources).

    ``requested`` None follows ``[publish] include_images`` of fea20k.toml and falls back to annotations-only (with a
    warning) when a source is not allowed; ``requested`` True (``--include-images``) raises
    :class:`ImagesNotAllowedError` naming each blocked source, its licence and the confirmation flag.
    """
    want = ws.config.publish.include_images if requested is None else requested
    if not want:
        return False, []
    facts = source_facts(ws.config.sources, load_sources_file(terms_path))
    blocked = blocked_sources(facts, set(sources), set(confirmed))
    if not blocked:
        return True, []
    if requested:
        lines = "; ".join(f"{b.source} ({b.card_entry()['name']}: {b.card_entry()['licence']})" for b in blocked)
        flags = " ".join(f"--i-have-redistribution-rights {b.source}" for b in blocked)
        raise ImagesNotAllowedError(
            f"the licence of these sources forbids redistributing their faces: {lines}. Publish annotations-only "
            f"(drop --include-images), or confirm you hold redistribution rights: {flags}"
        )
    logger.warning("[publish] include_images is true but %s may not be redistributed (licence); this release is "
                   "annotations-only. Confirm rights with --i-have-redistribution-rights, or mark a generated "
                   "source `synthetic = true`", ", ".join(b.source for b in blocked))
    return False, blocked


def _light_rows(inputs: StageOutput) -> Iterator[tuple[str, str | None, bool | None, str | None, list[str], Any]]:
    cols = ["source", "emotion", "accepted", "excluded_at", "reasons", "round"]
    for t in inputs.iter_tables(cols):
        yield from zip(*(t.column(c).to_pylist() for c in cols), strict=True)


def build_release(
    ws: Workspace,
    round_: int,
    out_dir: Path | None = None,
    *,
    inputs: StageOutput | None = None,
    include_images: bool | None = None,
    confirmed: Iterable[str] = (),
    shard_max_bytes: int | None = None,
    card_template: str = CARD_TEMPLATE,
    sources_file: str = SOURCES_FILE,
) -> ReleaseSummary:
    """Build the release of round ``round_`` into ``out_dir`` (default ``releases/round-N``), atomically.

    Args:
        inputs: the records to publish (default: the output of the step before ``publish`` in the round's plan).
        include_images: None follows fea20k.toml (annotations-only when a source is not allowed); True requires
            every source to be allowed (synthetic, redistributable, or in ``confirmed``).
        confirmed: sources the user confirmed holding redistribution rights for.
        shard_max_bytes: shard size cap (default ``[publish] shard_max_mb``).
    """
    out_dir = Path(out_dir) if out_dir is not None else ws.release_dir(round_)
    inputs = inputs if inputs is not None else _completed_upstream(ws, round_)
    terms_path = ws.data_file(sources_file)
    facts = ReleaseFacts()
    sources_seen = _pool_facts(ws, round_, inputs, facts)
    images, blocked = image_policy(ws, sources_seen, include_images, confirmed, terms_path)
    vocab = _vocab(ws)
    with building_dir(out_dir) as tmp:
        writer = ReleaseWriter(tmp, vocab.emotions, images,
                               shard_max_bytes=shard_max_bytes or ws.config.publish.shard_max_mb << 20)
        shards = _write_splits(ws, round_, inputs, writer, facts, images)
        notes = _write_notes(ws, round_, tmp, facts)
        _write_card(ws, round_, tmp, writer, shards, facts, images, sources_seen, vocab,
                    load_sources_file(terms_path), card_template)
        manifest = {"round": round_, "include_images": images, "rows": writer.rows,
                    "inputs": [str(d.relative_to(ws.root)) if d.is_relative_to(ws.root) else d.name
                               for d in inputs.dirs]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    logger.info("release round-%d: %s (%s)", round_, dict(writer.rows), "with faces" if images else "annotations-only")
    return ReleaseSummary(folder=out_dir, round=round_, include_images=images, rows=dict(writer.rows), shards=shards,
                          notes_summary=notes.summary(), blocked=[b.source for b in blocked])


def _completed_upstream(ws: Workspace, round_: int) -> StageOutput:
    d = upstream_dir(ws, round_)
    if not (d / "_SUCCESS.json").is_file():
        raise Fea20kUserError(f"round {round_}: {d.name} has not completed; run `fea20k build --round {round_}`")
    return StageOutput([d])


def _pool_facts(ws: Workspace, round_: int, inputs: StageOutput, facts: ReleaseFacts) -> set[str]:
    """Pass 1 (light columns): acceptance of this round's pool and of earlier rounds' validate outputs; returns the
    sources present."""
    sources_seen: set[str] = set()
    for src, emo, acc, exat, reasons, rnd in _light_rows(inputs):
        sources_seen.add(src)
        if rnd is None or rnd >= round_:
            facts.add_pool_row(round_, emo, acc, exat, reasons or [])
    for k in range(round_):
        d = ws.stage_dir(k, "validate")
        if (d / "_SUCCESS.json").is_file():
            for _src, emo, acc, exat, reasons, _ in _light_rows(StageOutput([d])):
                facts.add_pool_row(k, emo, acc, exat, reasons or [])
    return sources_seen


def _write_splits(ws: Workspace, round_: int, inputs: StageOutput, writer: ReleaseWriter, facts: ReleaseFacts,
                  images: bool) -> dict[str, list[ShardInfo]]:
    """Pass 2: every row routed to train / test / rejected with the reviews applied; the faces are read only when
    they go in."""
    reviews = load_reviews(ws.root, round_)
    review_cols = {rid: (r.decision, r.note or r.reason) for rid, r in reviews.items()}
    seen_review_ids: set[str] = set()
    try:
        for table in inputs.iter_tables(None if images else sorted(WITHOUT_FACE)):
            _publish_part(table, writer, reviews, review_cols, seen_review_ids, facts)
        shards = writer.finish()
    except BaseException:
        writer.abort()
        raise
    unknown = sorted(set(reviews) - seen_review_ids)
    if unknown:
        facts.reviews["unknown id"] += len(unknown)
        logger.warning("%s: %d review(s) name ids not in round %d's release, e.g. %s",
                       reviews_path(ws.root, round_).name, len(unknown), round_, unknown[:3])
    return shards


def _write_notes(ws: Workspace, round_: int, tmp: Path, facts: ReleaseFacts) -> Any:
    """Release notes against the previous round's local release."""
    prev = ws.release_dir(round_ - 1) if round_ > 0 else None
    prev_digests = release_digests(prev) if prev is not None else None
    notes = compare(round_, facts.row_digests, prev_digests, round_ - 1 if prev_digests is not None else None)
    (tmp / NOTES_FILE).write_text(notes.markdown(), encoding="utf-8")
    return notes


def _write_card(ws: Workspace, round_: int, tmp: Path, writer: ReleaseWriter, shards: dict[str, list[ShardInfo]],
                facts: ReleaseFacts, images: bool, sources_seen: set[str], vocab: Any, terms: Any,
                card_template: str) -> None:
    """The dataset card README.md: YAML front matter (configs, features) and the rendered template."""
    seen = {k: v for k, v in ws.config.sources.items() if k in sources_seen}
    src_facts = source_facts(seen, terms, source_conventions(ws, seen))
    front = {
        "pretty_name": terms.release.pretty_name,
        "license": terms.release.license,
        "language": ["en"],
        "task_categories": ["image-classification", "image-text-to-text"],
        "tags": ["facial-expression-recognition", "action-units", "emotion", "rationale", "fea20k"],
        "configs": writer.configs_yaml(),
        "dataset_info": writer.dataset_info(shards),
    }
    ctx = card_context(
        facts=facts, round_=round_, sources=[src_facts[s] for s in sorted(src_facts)], release=terms.release,
        include_images=images, emotions=vocab.emotions, au_names=vocab.au_names, recipe_name=ws.recipe.name,
        recipe_sha256=hashlib.sha256(ws.recipe_path.read_bytes()).hexdigest()[:16],
        curation_sha256=tree_digest(ws.root, CURATOR_FOLDERS)[:16], fea20k_version=__version__,
        front_matter=yaml.safe_dump(front, sort_keys=False, allow_unicode=True),
        n_rejected=writer.rows["rejected"],
    )
    (tmp / "README.md").write_text(render_card(ws.data_file(card_template), ctx), encoding="utf-8")


LIGHT_COLUMNS = ["id", "source", "split", "emotion", "aus", "au_coded", "rationale", "accepted", "reasons",
                 "excluded_at"]


def _publish_part(table: pa.Table, writer: ReleaseWriter, reviews: dict[str, Any],
                  review_cols: dict[str, tuple[str, str | None]], seen_review_ids: set[str],
                  facts: ReleaseFacts) -> None:
    """Route one input part: verdicts and facts from its light columns (as records), rows written column-wise."""
    import pyarrow.compute as pc

    light = from_arrow(table.select(LIGHT_COLUMNS))
    route: list[str] = []
    changed = False
    edited: dict[int, str] = {}  # row -> provenance line of a reviewer's edit
    for i, rec in enumerate(light):
        review = reviews.get(rec.id)
        if review is not None:
            seen_review_ids.add(rec.id)
            was = (rec.accepted, len(rec.reasons))
            _apply_review(rec, review.decision, facts)
            if review.rationale:
                facts.reviews["rationale edited"] += 1
                if rec.rationale is not None and review.rationale != rec.rationale.text:
                    # the reviewer's text, which passed the checks when it was saved, is what the row releases
                    rec.rationale.text = review.rationale
                    edited[i] = (f"rationale edited by {review.reviewer or 'a reviewer'}"
                                 + (f" at {review.time}" if review.time else ""))
            if review.gt_wrong:
                facts.reviews["ground truth flagged wrong"] += 1
            changed = changed or was != (rec.accepted, len(rec.reasons))
        if rec.accepted is None:
            rec.exclude("publish", "not_validated")
            changed = True
        if rec.accepted:
            split = "test" if rec.split == "test" else "train"
            facts.add_released(split, rec)
        else:
            split = "rejected"
            facts.add_rejected(rec)
        route.append(split)
    if changed:
        for name, typ in (("accepted", pa.bool_()), ("reasons", pa.list_(pa.string())),
                          ("excluded_at", pa.string())):
            values = pa.array([getattr(r, name) for r in light], type=typ)
            table = table.set_column(table.schema.get_field_index(name), name, values)
    if edited:
        table = _with_edits(table, light, edited)
    routes = pa.array(route)
    for split in ("train", "test", "rejected"):
        mask = pc.equal(routes, split)
        if not pc.any(mask).as_py():
            continue
        writer.add_table(split, table.filter(mask), review_cols)


def _with_edits(table: pa.Table, light: list[FaceRecord], edited: dict[int, str]) -> pa.Table:
    """``table`` with the reviewers' rationale texts and a ``review`` provenance entry on the edited rows."""
    from dataclasses import asdict

    rat_field = table.schema.field("rationale")
    rationale = pa.array([asdict(r.rationale) if r.rationale is not None else None for r in light],
                         type=rat_field.type)
    table = table.set_column(table.schema.get_field_index("rationale"), rat_field, rationale)
    prov_field = table.schema.field("provenance")
    prov = table.column("provenance").to_pylist()
    for i, line in edited.items():
        prov[i] = [*(prov[i] or []), ("review", line)]
    return table.set_column(table.schema.get_field_index("provenance"), prov_field,
                            pa.array(prov, type=prov_field.type))


def _apply_review(rec: FaceRecord, decision: str, facts: ReleaseFacts) -> None:
    if decision == "reject":
        if rec.accepted:
            rec.exclude("review", "human_reject")
            facts.reviews["reject"] += 1
        else:
            facts.reviews["reject (already rejected)"] += 1
    elif rec.accepted:
        facts.reviews["accept"] += 1
    else:
        facts.reviews["accept (kept rejected)"] += 1


def _vocab(ws: Workspace) -> Any:
    from fea20k.vocab import load_vocab

    d = ws.data_file("validators")
    return load_vocab(d if (d / "vocab.toml").is_file() else None)


@contextmanager
def building_dir(final: Path) -> Iterator[Path]:
    """A fresh, empty folder beside ``final`` to write into; moved into place (:func:`replace_dir`) when the block
    completes, removed when it raises, so ``final`` is never half-written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as e:
        written = _tree_size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            # a new folder takes about what the one it replaces takes, and at least what was written before it failed
            raise disk_full_error(final, max(written, _tree_size(final)) or None) from e
        raise
    replace_dir(tmp, final)


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a completed folder into place: the old one is renamed aside first and removed after."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def release_manifest(folder: Path) -> dict[str, Any] | None:
    """How a release folder was built (None when it is not a fea20k release)."""
    p = Path(folder) / MANIFEST
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


class PublishConfig(StageConfig):
    """Configuration of the ``publish`` stage (a recipe needs no table for it)."""

    shard_max_mb: int | None = Field(None, ge=1)  # None: [publish] shard_max_mb of fea20k.toml
    card: str = CARD_TEMPLATE
    sources_file: str = SOURCES_FILE
    # sources whose faces the curator confirms holding redistribution rights for (the recipe's equivalent of
    # `fea20k publish --i-have-redistribution-rights SRC`)
    i_have_redistribution_rights: list[str] = Field(default_factory=list)


@register_stage("publish")
class PublishStage(AggregateStage):
    """Write the round's release folder ``releases/round-N/`` (Hub layout, card, release notes); a sink.

    Config: ``shard_max_mb``, ``card`` (template), ``sources_file`` (licence terms), ``i_have_redistribution_rights``.
    Faces are embedded when fea20k.toml's ``[publish] include_images`` is true and every source in the release is
    synthetic, redistributable by its licence, or confirmed; otherwise the release is annotations-only.
    Human reviews ``reviews/round-N.jsonl`` are applied (see :mod:`fea20k.publish.reviews`).

    Input fields: every field of the validated records (accepted, reasons, rationale, labels, face, image ref).
    Output fields: none (a sink); the release folder, and the release in the ledger.
    Drops: nothing; records with no verdict go to ``rejected`` with reason ``not_validated``.
    """

    Config = PublishConfig
    config: PublishConfig

    def recipe_files(self) -> list[Path]:
        ws = self.ctx.workspace
        return [ws.data_file(self.config.card), ws.data_file(self.config.sources_file),
                ws.data_file("validators", "vocab.toml"), reviews_path(ws.root, self.ctx.round)]

    def signature_extra(self) -> dict[str, Any]:
        ws = self.ctx.workspace
        return {
            "include_images": ws.config.publish.include_images,
            "shard_max_mb": self.config.shard_max_mb or ws.config.publish.shard_max_mb,
            "sources": {k: [v.adapter, v.synthetic] for k, v in sorted(ws.config.sources.items())},
            "curation": tree_digest(ws.root, CURATOR_FOLDERS),  # the card quotes its hash
        }

    def run(self, inputs: StageOutput) -> Iterator[list[FaceRecord]]:
        ws = self.ctx.workspace
        mb = self.config.shard_max_mb
        summary = build_release(ws, self.ctx.round, inputs=inputs, confirmed=self.config.i_have_redistribution_rights,
                                shard_max_bytes=mb << 20 if mb else None, card_template=self.config.card,
                                sources_file=self.config.sources_file)
        for split, n in summary.rows.items():
            self.stats.add(f"release_{split}", n)
        self.stats.add("release_with_faces", int(summary.include_images))
        ws.ledger.record_release(self.ctx.round, f"releases/round-{self.ctx.round}", None)
        yield from ()

    def outputs_present(self) -> bool:
        return (self.ctx.workspace.release_dir(self.ctx.round) / "README.md").is_file()
