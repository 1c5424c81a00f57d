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
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml
from pydantic import Field

from fea20k import __version__
from fea20k.errors import DiskFullError, Fea20kUserError
from fea20k.io import StageOutput, disk_full_error, is_disk_full
from fea20k.publish.card import (
    CardTemplate,
    SourceFacts,
    blocked_sources,
    card_context,
    load_card_template,
    load_sources_file,
    source_conventions,
    source_facts,
)
from fea20k.publish.facts import ReleaseFacts, tree_digest
from fea20k.publish.notes import NOTES_FILE, compare, release_digests
from fea20k.publish.release import ReleaseWriter, ShardInfo, contiguous
from fea20k.publish.reviews import Review, is_current, load_reviews, reviews_path, write_edit
from fea20k.record import FaceRecord
from fea20k.schema import SCHEMA
from fea20k.stage import AggregateStage, StageConfig, register_stage
from fea20k.workspace import Workspace


if TYPE_CHECKING:
    from concurrent.futures import Future


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


def _sources_in(inputs: StageOutput) -> set[str]:
    import pyarrow.compute as pc

    return {s for t in inputs.iter_tables(["source"]) for s in pc.unique(t.column("source")).to_pylist()}


def _decide_images(ws: Workspace, inputs: StageOutput, requested: bool | None, confirmed: Iterable[str],
                   terms_path: Path) -> tuple[bool, list[SourceFacts]]:
    """:func:`image_policy` before the rows are read: when every configured source may be published, so may any
    subset, and the sources present need no pass of their own (the write pass checks them, see
    :class:`_UnexpectedSource`); otherwise a light pass finds them first."""
    want = ws.config.publish.include_images if requested is None else requested
    if want:
        facts = source_facts(ws.config.sources, load_sources_file(terms_path))
        if not blocked_sources(facts, set(ws.config.sources), set(confirmed)):
            return True, []
    return image_policy(ws, _sources_in(inputs) if want else (), requested, confirmed, terms_path)


class _UnexpectedSource(Exception):
    """Rows of a source fea20k.toml does not configure, in a release that includes faces: the image policy has to
    be decided again with the sources actually present."""


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
    from concurrent.futures import ThreadPoolExecutor

    out_dir = Path(out_dir) if out_dir is not None else ws.release_dir(round_)
    inputs = inputs if inputs is not None else _completed_upstream(ws, round_)
    terms_path = ws.data_file(sources_file)
    images, blocked = _decide_images(ws, inputs, include_images, confirmed, terms_path)
    vocab, terms = _vocab(ws), load_sources_file(terms_path)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fea20k-card") as pool:
        # Jinja2 is imported and the card template compiled while the rows are read (that mostly waits on Arrow,
        # which releases the GIL); an error in the template is raised when the card is written, as before
        card = pool.submit(load_card_template, ws.data_file(card_template))
        build = _ReleaseBuild(ws, round_, inputs, vocab, images, set(confirmed),
                              shard_max_bytes or ws.config.publish.shard_max_mb << 20)
        try:
            with building_dir(out_dir) as tmp:
                writer, notes = build.write(tmp, card, terms)
        except _UnexpectedSource:
            images, blocked = image_policy(ws, build.sources_seen, include_images, confirmed, terms_path)
            build = _ReleaseBuild(ws, round_, inputs, vocab, images, set(confirmed), build.shard_max_bytes)
            with building_dir(out_dir) as tmp:
                writer, notes = build.write(tmp, card, terms)
    logger.info("release round-%d: %s (%s)", round_, dict(writer.rows), "with faces" if images else "annotations-only")
    return ReleaseSummary(folder=out_dir, round=round_, include_images=images, rows=dict(writer.rows),
                          shards=build.shards, notes_summary=notes.summary(), blocked=[b.source for b in blocked])


def _completed_upstream(ws: Workspace, round_: int) -> StageOutput:
    d = upstream_dir(ws, round_)
    if not (d / "_SUCCESS.json").is_file():
        raise Fea20kUserError(f"round {round_}: {d.name} has not completed; run `fea20k build --round {round_}`")
    return StageOutput([d])


POOL_COLUMNS = ["emotion", "accepted", "excluded_at", "reasons"]
# the record columns a release row is made of (fea20k.publish.release.table_to_batch)
RELEASE_INPUTS = frozenset(SCHEMA.names) - {"face_transform", "quality", "accepted"}
# what publish reads: the release's inputs and the verdict (not the crops' transforms nor their quality figures)
PUBLISH_READS = RELEASE_INPUTS | {"accepted"}


@dataclass
class _ReleaseBuild:
    """One build of a release folder: a single pass over the input parts routes the rows, applies the reviews and
    gathers the facts the card and the notes report; then the notes, the card and the manifest."""

    ws: Workspace
    round: int
    inputs: StageOutput
    vocab: Any
    images: bool
    confirmed: set[str]
    shard_max_bytes: int
    facts: ReleaseFacts = field(default_factory=ReleaseFacts)
    sources_seen: set[str] = field(default_factory=set)
    shards: dict[str, list[ShardInfo]] = field(default_factory=dict)

    def write(self, tmp: Path, card: Future[CardTemplate], terms: Any) -> tuple[ReleaseWriter, Any]:
        ws, round_ = self.ws, self.round
        writer = ReleaseWriter(tmp, self.vocab.emotions, self.images, shard_max_bytes=self.shard_max_bytes)
        previous = _previous_release(ws, round_)
        self.facts.digests = previous is not None  # the notes compare rows' digests with a previous release only
        self.shards = _write_splits(ws, round_, self.inputs, writer, self.facts, self.images, self.sources_seen)
        unknown = self.sources_seen - set(ws.config.sources)
        if self.images and unknown and blocked_sources(source_facts({}, terms), unknown, self.confirmed):
            raise _UnexpectedSource(sorted(unknown))
        for k in range(round_):  # earlier rounds' acceptance, for the card's table of rounds
            d = ws.stage_dir(k, "validate")
            if (d / "_SUCCESS.json").is_file():
                for t in StageOutput([d]).iter_tables(POOL_COLUMNS):
                    self.facts.add_pool(k, t)
        notes = _write_notes(round_, tmp, self.facts, previous)
        _write_card(ws, round_, tmp, writer, self.shards, self.facts, self.images, self.sources_seen, self.vocab,
                    terms, card.result())
        manifest = {"round": round_, "include_images": self.images, "rows": writer.rows,
                    "inputs": [str(d.relative_to(ws.root)) if d.is_relative_to(ws.root) else d.name
                               for d in self.inputs.dirs]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        return writer, notes


def _write_splits(ws: Workspace, round_: int, inputs: StageOutput, writer: ReleaseWriter, facts: ReleaseFacts,
                  images: bool, sources_seen: set[str]) -> dict[str, list[ShardInfo]]:
    """Every row routed to train / test / rejected with the reviews applied; the faces are read only when they go
    in."""
    reviews = _Reviews.of(load_reviews(ws.root, round_))
    try:
        columns = sorted(PUBLISH_READS if images else PUBLISH_READS - {"face"})
        with closing(inputs.iter_tables(columns, read_ahead=2)) as tables:
            for table in tables:
                _publish_part(table, round_, writer, reviews, facts, sources_seen)
        shards = writer.finish()
    except BaseException:
        writer.abort()
        raise
    name = reviews_path(ws.root, round_).name
    unknown = sorted(set(reviews.by_id) - reviews.seen)
    if unknown:
        facts.reviews["unknown id"] += len(unknown)
        logger.warning("%s: %d review(s) name ids not in round %d's release, e.g. %s", name, len(unknown), round_,
                       unknown[:3])
    if reviews.stale:
        logger.warning("%s: %d review(s) were made on an earlier version of their row (a rebuild changed its "
                       "rationale, labels or verdict), e.g. %s: their rejects still apply, their edited rationales "
                       "do not; review them again with `fea20k review --round %d -w %s`", name, len(reviews.stale),
                       reviews.stale[:3], round_, ws.root)
    return shards


@dataclass
class _Reviews:
    """A round's reviews as publish applies them, and what the pass over the rows found of them."""

    by_id: dict[str, Review]
    columns: dict[str, tuple[str, str | None]]  # id -> the release's (review, review_note) values
    seen: set[str] = field(default_factory=set)  # ids met in the rows
    stale: list[str] = field(default_factory=list)  # ids whose row changed since the decision (its signature)

    @classmethod
    def of(cls, by_id: dict[str, Review]) -> _Reviews:
        return cls(by_id, {rid: (r.decision, r.note or r.reason) for rid, r in by_id.items()})


def _previous_release(ws: Workspace, round_: int) -> Path | None:
    """The previous round's local release folder, the one the notes compare with (None: this is a first release)."""
    prev = ws.release_dir(round_ - 1) if round_ > 0 else None
    return prev if prev is not None and (prev / "README.md").is_file() else None


def _write_notes(round_: int, tmp: Path, facts: ReleaseFacts, previous: Path | None) -> Any:
    """Release notes against the previous round's local release."""
    prev_digests = release_digests(previous) if previous is not None else None
    # a first release lists the ids it adds: only a comparison needs the rows' digests
    current = facts.row_digests() if prev_digests is not None else dict.fromkeys(facts.released_ids(), "")
    notes = compare(round_, current, prev_digests, round_ - 1 if prev_digests is not None else None)
    (tmp / NOTES_FILE).write_text(notes.markdown(), encoding="utf-8")
    return notes


def _write_card(ws: Workspace, round_: int, tmp: Path, writer: ReleaseWriter, shards: dict[str, list[ShardInfo]],
                facts: ReleaseFacts, images: bool, sources_seen: set[str], vocab: Any, terms: Any,
                template: CardTemplate) -> None:
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
        # libyaml's emitter when there is one: the same text, a few times faster
        front_matter=yaml.dump(front, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False,
                               allow_unicode=True),
        n_rejected=writer.rows["rejected"],
    )
    (tmp / "README.md").write_text(template.render(ctx), encoding="utf-8")


def _publish_part(table: pa.Table, round_: int, writer: ReleaseWriter, reviews: _Reviews, facts: ReleaseFacts,
                  sources_seen: set[str]) -> None:
    """Route one input part, column-wise: its pool facts (the verdicts as the checks left them), the reviews and the
    ``not_validated`` exclusion applied, the facts of the released and rejected rows, the rows written."""
    import pyarrow.compute as pc

    sources_seen.update(pc.unique(table.column("source")).to_pylist())
    this_round = pc.fill_null(pc.greater_equal(table.column("round"), round_), True)  # earlier rounds' rows: merged
    pool = table.select(POOL_COLUMNS)
    facts.add_pool(round_, pool if pc.all(this_round).as_py() else pool.filter(this_round))
    table = _apply_reviews(table, reviews, facts)
    table = _exclude_not_validated(table)
    accepted = contiguous(table.column("accepted"))
    is_test = contiguous(pc.fill_null(pc.equal(table.column("split"), "test"), False))
    routes = {"train": pc.and_(accepted, pc.invert(is_test)), "test": pc.and_(accepted, is_test),
              "rejected": pc.invert(accepted)}
    # only what the release holds is filtered (copied), once per split: the facts count the same rows
    table = table.select([c for c in table.column_names if c in RELEASE_INPUTS])
    for split, mask in routes.items():
        if not pc.any(mask).as_py():
            continue
        rows = table.filter(mask)
        if split == "rejected":
            facts.add_rejected(rows.select(["source", "reasons"]))
        else:
            facts.add_released(split, rows.select(["id", "source", "emotion", "aus", "au_coded", "rationale"]))
        writer.add_table(split, rows, reviews.columns)


def _exclude_not_validated(table: pa.Table) -> pa.Table:
    """Rows no check judged (``accepted`` null) excluded at ``publish`` with the reason ``not_validated``."""
    import pyarrow.compute as pc

    missing = pc.is_null(table.column("accepted"))
    if not pc.any(missing).as_py():
        return table
    verdicts = _Verdicts.of(table)
    for i in pc.indices_nonzero(missing).to_pylist():
        verdicts.exclude(i, "publish", "not_validated")
    return verdicts.onto(table)


@dataclass
class _Verdicts:
    """The verdict columns of a table as lists, for the few rows publish rules out itself."""

    accepted: list[Any]
    reasons: list[list[str]]
    excluded_at: list[Any]

    @classmethod
    def of(cls, table: pa.Table) -> _Verdicts:
        return cls(table.column("accepted").to_pylist(),
                   [list(r) if r else [] for r in table.column("reasons").to_pylist()],
                   table.column("excluded_at").to_pylist())

    def exclude(self, i: int, stage: str, reason: str) -> None:
        """FaceRecord.exclude(stage, reason) of row ``i``."""
        self.accepted[i] = False
        self.reasons[i].append(reason)
        if self.excluded_at[i] is None:
            self.excluded_at[i] = stage

    def onto(self, table: pa.Table) -> pa.Table:
        """``table`` with these verdict columns (a row without reasons holds an empty list, as a record does)."""
        for name, values, typ in (("accepted", self.accepted, pa.bool_()),
                                  ("reasons", self.reasons, pa.list_(pa.string())),
                                  ("excluded_at", self.excluded_at, pa.string())):
            table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, type=typ))
        return table


def _apply_reviews(table: pa.Table, reviews: _Reviews, facts: ReleaseFacts) -> pa.Table:
    """The reviewers' decisions and edited rationales applied to the (few) reviewed rows of ``table``."""
    import pyarrow.compute as pc

    if not reviews.by_id:
        return table
    ids = table.column("id")
    rows = pc.indices_nonzero(pc.is_in(ids, value_set=pa.array(list(reviews.by_id), pa.string()))).to_pylist()
    if not rows:
        return table
    verdicts = _Verdicts.of(table)
    changed = False
    edited: dict[int, tuple[str, str]] = {}  # row -> (new text, provenance line of the reviewer's edit)
    for i, rec in zip(rows, _reviewed_records(table, rows), strict=True):
        review = reviews.by_id[rec.id]
        reviews.seen.add(review.id)
        stale = not is_current(rec, review)
        if stale:
            reviews.stale.append(review.id)
            facts.reviews["made on an earlier version of the row"] += 1
        if _apply_review(verdicts.accepted[i], review.decision, facts):
            verdicts.exclude(i, "review", "human_reject")
            changed = True
        if review.rationale:
            if stale:  # written for the text the reviewer saw: the row's new text stands
                facts.reviews["rationale edit not applied (row changed since)"] += 1
            else:
                facts.reviews["rationale edited"] += 1
                # the reviewer's text, which passed the checks when it was saved, is what the row releases
                if write_edit(rec, review):
                    edited[i] = (review.rationale, rec.provenance["review"])
        if review.gt_wrong:
            facts.reviews["ground truth flagged wrong"] += 1
    if changed:
        table = verdicts.onto(table)
    return _with_edits(table, edited) if edited else table


def _reviewed_records(table: pa.Table, rows: list[int]) -> list[FaceRecord]:
    """Rows ``rows`` of ``table`` (the reviewed ones: a few) as records holding what a review's signature and an
    edit read (:func:`~fea20k.publish.reviews.row_signature`, :func:`~fea20k.publish.reviews.write_edit`)."""
    from fea20k.schema import from_arrow

    return from_arrow(table.take(rows).select(["id", "source", "rationale", "emotion", "aus", "au_coded", "accepted",
                                               "reasons"]))


def _with_edits(table: pa.Table, edited: dict[int, tuple[str, str]]) -> pa.Table:
    """``table`` with the reviewers' rationale texts and a ``review`` provenance entry on the edited rows."""
    import pyarrow.compute as pc

    rat = contiguous(table.column("rationale"))
    texts = pc.struct_field(rat, "text").to_pylist()
    for i, (text, _) in edited.items():
        texts[i] = text
    fields = [pa.array(texts, pa.string()) if f.name == "text" else pc.struct_field(rat, f.name)
              for f in rat.type]
    rationale = pa.StructArray.from_arrays(fields, fields=list(rat.type), mask=pc.is_null(rat))
    table = table.set_column(table.schema.get_field_index("rationale"), table.schema.field("rationale"), rationale)
    prov_field = table.schema.field("provenance")
    prov = table.column("provenance").to_pylist()
    for i, (_, line) in edited.items():
        prov[i] = [*(prov[i] or []), ("review", line)]
    return table.set_column(table.schema.get_field_index("provenance"), prov_field,
                            pa.array(prov, type=prov_field.type))


def _apply_review(accepted: bool | None, decision: str, facts: ReleaseFacts) -> bool:
    """Count a reviewer's decision about a row; True when it moves a released row out (a reject)."""
    if decision == "reject":
        if accepted:
            facts.reviews["reject"] += 1
            return True
        facts.reviews["reject (already rejected)"] += 1
    elif accepted:
        facts.reviews["accept"] += 1
    else:
        facts.reviews["accept (kept rejected)"] += 1
    return False


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
