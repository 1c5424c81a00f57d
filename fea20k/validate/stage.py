"""The ``validate`` stage: every check of the rule set on every drafted rationale, plus template collapse."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from fea20k.io import StageOutput, own_columns
from fea20k.record import FaceRecord
from fea20k.schema import SCHEMA, WITHOUT_GEOMETRY, from_arrow, meta_json
from fea20k.stage import AggregateStage, StageConfig, register_stage
from fea20k.validate.checks import RuleSet, check_text, load_ruleset, registered_checks, rule_files


if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)


# Count-min sketch for the first template pass: DEPTH rows of WIDTH 32-bit counters (4 x 2^20 x 4 B = 16 MiB),
# whatever the round size. It only over-counts; the second pass counts the few candidates it flags exactly.
_CMS_DEPTH = 4
_CMS_WIDTH_BITS = 20


def template_key(text: str) -> bytes:
    """16-byte digest of a rationale: lower-cased, answer block(s) removed, whitespace collapsed."""
    low = text.lower()
    a = low.find("<answer>")
    if a >= 0:
        b = low.rfind("</answer>")
        low = low[:a] + (low[b + len("</answer>"):] if b >= a else "")
    return hashlib.blake2b(" ".join(low.split()).encode("utf-8"), digest_size=16).digest()


class TemplateCounter:
    """Exact counts of repeated rationale texts over a round in bounded memory (two streaming passes).

    Pass 1 feeds every key to a count-min sketch (fixed size). Pass 2 counts exactly only the keys whose sketch
    estimate exceeds ``max_repeats``: at most ``n / max_repeats`` true heavy keys plus rare false positives.
    """

    def __init__(self, max_repeats: int) -> None:
        import numpy as np

        self.max_repeats = max_repeats
        self._mask = (1 << _CMS_WIDTH_BITS) - 1
        self._sketch = np.zeros((_CMS_DEPTH, 1 << _CMS_WIDTH_BITS), dtype=np.uint32)
        self._exact: dict[bytes, int] = {}

    def _slots(self, key: bytes) -> list[int]:
        return [int.from_bytes(key[4 * i:4 * i + 4], "little") & self._mask for i in range(_CMS_DEPTH)]

    def _slot_matrix(self, keys: list[bytes]):  # noqa: ANN202 - numpy array
        import numpy as np

        return np.frombuffer(b"".join(keys), dtype="<u4").reshape(len(keys), 4)[:, :_CMS_DEPTH] & self._mask

    def add_sketch(self, keys: list[bytes]) -> None:
        """Pass 1: count a batch of keys in the sketch."""
        if not keys:
            return
        import numpy as np

        slots = self._slot_matrix(keys)
        for row in range(_CMS_DEPTH):
            np.add.at(self._sketch[row], slots[:, row], 1)

    def may_exceed(self) -> bool:
        """Whether the sketch can flag a key (some estimate above ``max_repeats``); if not, pass 2 would count
        nothing. One row of counters decides: an estimate is the least of its rows' counters."""
        return bool(self._sketch[0].max() > self.max_repeats)

    def estimate(self, key: bytes) -> int:
        return int(min(self._sketch[r, s] for r, s in enumerate(self._slots(key))))

    def add_exact(self, keys: list[bytes]) -> None:
        """Pass 2: count exactly the keys the sketch flags as possibly repeated more than ``max_repeats``."""
        import numpy as np

        if not keys:
            return
        slots = self._slot_matrix(keys)
        est = self._sketch[0, slots[:, 0]]
        for row in range(1, _CMS_DEPTH):
            est = np.minimum(est, self._sketch[row, slots[:, row]])
        exact = self._exact
        for i in np.flatnonzero(est > self.max_repeats).tolist():
            key = keys[i]
            exact[key] = exact.get(key, 0) + 1

    def without_sketch(self) -> TemplateCounter:
        """This counter for the checking pass, which reads only the exact counts (:meth:`count`): light enough to
        travel to worker processes with every part (the sketch is 16 MiB)."""
        import copy

        light = copy.copy(self)
        light._sketch = None
        return light

    def count(self, key: bytes) -> int:
        """Exact count of a flagged key; 0 means 'at most max_repeats' (not flagged)."""
        return self._exact.get(key, 0)

    @property
    def collapsed(self) -> int:
        """Number of distinct texts repeated more than ``max_repeats`` times."""
        return sum(1 for v in self._exact.values() if v > self.max_repeats)


class ValidateConfig(StageConfig):
    """Which rule set to apply (a path in the workspace)."""

    rules: str = "validators/default.toml"


@register_stage("validate")
class Validate(AggregateStage):
    """Check every drafted rationale against its record's labels; rule out the ones that fail, with reasons.

    Runs the registered per-record checks of :mod:`fea20k.validate.checks` in order (format, emotion agreement,
    AU agreement by F1 or exact set on the AUs the source codes, hedging, length, AU<->emotion consistency, then
    the workspace's own checks from ``validators/*.py``) and, over the whole round, template collapse (two light
    streaming passes over the rationale column, bounded memory, then the checking pass). The rule set, emotion
    synonyms, prototypes and the workspace's check modules are curator files (``recipe_files``), so editing a
    threshold or a check re-runs only this stage and the ones after it.

    Args:
        rules: the rule set file, relative to the workspace (default ``validators/default.toml``); its folder
            also supplies ``vocab.toml`` and ``prototypes.toml``.
    Input fields: rationale.text, rationale.backend, emotion, emotion_origin, aus, au_coded.
    Output fields: accepted (True/False), reasons, scores (format, emotion_match, au_precision, au_recall, au_f1,
        au_hallucinated, au_missed, au_mentions, hedging_hits, words, prototype_fraction, template_count),
        meta["validate"] ({hallucinated, missed, unverifiable} AU lists), provenance["validate"] =
        "<rules>@<sha256[:12]>". Records excluded upstream pass through untouched.
    Drops: no_rationale; the reasons of the registered checks (listed in fea20k.validate.checks);
        template_collapse.
    Example:
        ``[stages.validate] rules = "validators/strict.toml"``
    """

    Config = ValidateConfig
    # what the stage itself looks at; view_columns adds what the registered checks read
    reads = frozenset({"rationale", "scores", "meta", "provenance"})
    writes = frozenset({"scores", "meta", "provenance"})
    VERSION: ClassVar[str] = "1"

    def view_columns(self) -> list[str] | None:
        """The stage's own columns and those of every registered check (a check that names none reads the record
        but its face, as a workspace check written before checks named theirs expects)."""
        own = super().view_columns()
        if own is None:
            return None
        wanted = set(own)
        for c in registered_checks():
            wanted |= c.reads if c.reads is not None else WITHOUT_GEOMETRY
        return sorted(wanted)

    def _rules_path(self) -> Path:
        return self.ctx.workspace.data_file(self.config.rules)

    def recipe_files(self) -> list[Path]:
        return rule_files(self._rules_path())

    def load(self) -> None:
        path = self._rules_path()
        self.rules: RuleSet = load_ruleset(path, where=self.config.rules)
        self.provenance = f"{self.config.rules}@{self.rules.digest}"

    # -- template passes
    def _light_keys(self, table: pa.Table) -> list[bytes]:
        """Template keys of the live, non-exempt rationales of a table of ``accepted`` and ``rationale``."""
        import pyarrow.compute as pc

        exempt = set(self.rules.template.exempt_backends)
        accepted = table.column("accepted").to_pylist()
        rationale = table.column("rationale")
        texts = pc.struct_field(rationale, "text").to_pylist()
        backends = pc.struct_field(rationale, "backend").to_pylist()
        return [template_key(text) for acc, text, be in zip(accepted, texts, backends, strict=True)
                if acc is not False and text and be not in exempt]

    def _count_templates(self, inputs: StageOutput) -> TemplateCounter:
        counter = TemplateCounter(self.rules.template.max_repeats)
        for table in inputs.iter_tables(["accepted", "rationale"], read_ahead=1):
            counter.add_sketch(self._light_keys(table))
        if not counter.may_exceed():  # no text repeated often enough (or none checked): no second pass
            return counter
        for table in inputs.iter_tables(["accepted", "rationale"], read_ahead=1):
            counter.add_exact(self._light_keys(table))
        return counter

    # -- the checking pass
    def verdict(self, rec: FaceRecord, counter: TemplateCounter | None) -> Verdict:
        """Every check of one live record: its new reasons, scores and ``meta["validate"]`` (None: no rationale)."""
        rationale = rec.rationale
        text = rationale.text if rationale is not None else None
        if not text:
            return Verdict(["no_rationale"], {}, None)
        res = check_text(text, rec, self.rules)
        reasons = list(res.reasons)
        template = self.rules.template
        if counter is not None and rationale.backend not in template.exempt_backends:
            n = counter.count(template_key(text))
            if n:
                res.scores["template_count"] = float(n)
            if n > template.max_repeats:
                reasons.append("template_collapse")
        return Verdict(reasons, res.scores, res.details())

    def check_record(self, rec: FaceRecord, counter: TemplateCounter | None) -> FaceRecord:
        """Apply every check to one (live) record; set its verdict, reasons, scores and provenance."""
        v = self.verdict(rec, counter)
        rec.provenance["validate"] = self.provenance
        rec.scores.update(v.scores)
        if v.details is not None:
            rec.meta["validate"] = v.details
        if v.reasons:
            return self.exclude(rec, *v.reasons)
        rec.accepted = True
        return rec

    def checked_part(self, table: pa.Table, counter: TemplateCounter | None) -> tuple[pa.Table, int]:
        """(The stage's columns, rows checked) of one input table: ``id``, scores, meta, provenance and verdict in
        its row order, what :meth:`check_record` makes of each live row's record, and the rows excluded upstream as
        they are. Pure (the stats are counted by :meth:`run`), so that it runs on the build's worker processes.

        Only the live rows become records, holding only what the checks read; the columns the stage writes are
        computed from the input columns and the verdicts, so the rows excluded upstream, and every column no check
        reads, cost no Python conversion.
        """
        import pyarrow.compute as pc

        own = table.select(own_columns(self.writes))
        excluded = pc.fill_null(pc.equal(table.column("accepted"), False), False)
        n_excluded = pc.sum(excluded).as_py() or 0
        if n_excluded == table.num_rows:
            return _as_stored(own), 0
        live = pc.invert(excluded)
        view = _record_view(table, self._check_reads())  # narrowed first: less to filter
        with _no_cycle_collection():
            records = from_arrow(view.filter(live) if n_excluded else view)
            verdicts = [self.verdict(rec, counter) for rec in records]
            checked = self._checked_columns(own.filter(live) if n_excluded else own, verdicts)
        if not n_excluded:
            return checked, len(records)
        return _interleave(checked, _as_stored(own.filter(excluded)), excluded), len(records)

    def _check_reads(self) -> frozenset[str] | None:
        """The record fields the registered checks read (None: a check that names none may read any)."""
        reads: set[str] = set()
        for c in registered_checks():
            if c.reads is None:
                return None
            reads |= c.reads
        return frozenset(reads)

    def _checked_columns(self, own: pa.Table, verdicts: list[Verdict]) -> pa.Table:
        """The stage's columns of live rows (``own``: their input values) after their verdicts, as
        :meth:`check_record` sets them and :func:`~fea20k.schema.to_arrow` stores them."""
        import pyarrow as pa

        name, prov = self.name, self.provenance
        scores, metas, provenance, reasons, accepted, excluded_at = [], [], [], [], [], []
        for v, s, m, p, r, x in zip(verdicts, *(own.column(c).to_pylist() for c in (
                "scores", "meta", "provenance", "reasons", "excluded_at")), strict=True):
            scores.append({**dict(s), **v.scores} if s else v.scores)
            meta = json.loads(m) if m else {}
            if v.details is not None:
                meta["validate"] = v.details
            metas.append(meta_json(meta))
            p = dict(p) if p else {}
            p["validate"] = prov
            provenance.append(p)
            reasons.append([*r, *v.reasons] if r else v.reasons)
            accepted.append(not v.reasons)
            excluded_at.append(name if x is None and v.reasons else x)
        values = {"scores": scores, "meta": metas, "provenance": provenance, "reasons": reasons,
                  "accepted": accepted, "excluded_at": excluded_at}
        return pa.Table.from_arrays([pa.array(values[c], type=SCHEMA.field(c).type) if c in values else own.column(c)
                                     for c in own.column_names], schema=own.schema)

    def run(self, inputs: StageOutput) -> Iterator[pa.Table]:
        counter = self._count_templates(inputs) if self.rules.template.enabled else None
        if counter is not None:
            self.stats.add("template_texts_collapsed", counter.collapsed)
        # the parts are checked on the build's worker processes when its pool is running (map_parts): the checks
        # are per-row Python, and the pool is otherwise idle while the aggregates run
        light = counter.without_sketch() if counter is not None else None
        for table, checked in self.map_parts("checked_part", inputs.iter_tables(read_ahead=1), light):
            self.stats.add("checked", checked)
            yield table


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the cyclic garbage collector while a chunk's records are built, checked and stored: that allocates
    tens of thousands of small dicts and lists, each allocation count that crosses a threshold starts a collection
    that walks every live object of the build (measured: a sixth of the stage's time), and none of them forms a
    cycle (reference counting frees them). Bounded to one chunk; the previous state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Verdict(NamedTuple):
    """What the checks make of one live record: reasons to rule it out (none: accepted), scores to add and
    ``meta["validate"]`` (None when it has no rationale)."""

    reasons: list[str]
    scores: dict[str, float]
    details: dict[str, list[int]] | None


def _record_view(table: pa.Table, reads: frozenset[str] | None) -> pa.Table:
    """The columns of ``table`` the live records are built from: the record's identity, the rationale's text,
    annotator and backend (what the stage reads of it) and the fields the checks read (None: every column)."""
    import pyarrow as pa

    if reads is None:
        return table
    keep = [c for c in table.column_names if c in reads or c in ("id", "source", "rationale")]
    view = table.select(keep)
    if "rationale" in reads or "rationale" not in keep:
        return view
    r = view.column("rationale").combine_chunks()
    fields = ("text", "annotator", "backend")
    narrow = pa.StructArray.from_arrays([r.field(f) for f in fields], names=list(fields), mask=r.is_null())
    return view.set_column(keep.index("rationale"), "rationale", narrow)


def _as_stored(table: pa.Table) -> pa.Table:
    """``table`` as :func:`~fea20k.schema.to_arrow` would store its rows after a record round trip: an absent map or
    list is an empty one, an empty ``meta`` is null. Everything else already is what a record would store."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in ("reasons", "scores", "provenance"):
        if name in table.column_names and table.column(name).null_count:
            col = table.column(name)
            table = table.set_column(table.column_names.index(name), name,
                                     pc.coalesce(col, pa.scalar([], type=col.type)))
    if "meta" in table.column_names:
        meta = table.column("meta")
        empty = pc.is_in(meta, value_set=pa.array(["", "{}"]))
        if pc.any(empty).as_py():
            table = table.set_column(table.column_names.index("meta"), "meta",
                                     pc.if_else(empty, pa.scalar(None, pa.string()), meta))
    return table


def _interleave(live: pa.Table, excluded: pa.Table, is_excluded: pa.ChunkedArray) -> pa.Table:
    """The rows of ``live`` and ``excluded`` (same schema) back at their positions: row i of the result is the next
    row of ``excluded`` where ``is_excluded[i]``, else the next row of ``live``."""
    import numpy as np
    import pyarrow as pa

    mask = is_excluded.to_numpy(zero_copy_only=False)
    order = np.empty(len(mask), dtype=np.int64)
    order[~mask] = np.arange(live.num_rows)
    order[mask] = live.num_rows + np.arange(excluded.num_rows)
    return pa.concat_tables([live, excluded]).take(pa.array(order))
