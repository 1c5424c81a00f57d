"""What ``fea20k sources`` shows: the registered adapters, and per ingested source the counts by split, emotion,
AU and exclusion reason. Pure functions that return data or rich tables; only the CLI prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from rich.table import Table

    from fea20k.stage import Stage

SUMMARY_COLUMNS = ("split", "emotion", "aus", "accepted", "reasons")
SPLITS = ("train", "val", "test")


@dataclass
class AdapterInfo:
    """One registered ingest adapter."""

    name: str  # the adapter name used in fea20k.toml (``adapter = "..."``)
    corpus: str
    layout: str
    summary: str
    conventions: dict[str, str] = field(default_factory=dict)  # with the default options


@dataclass
class SourceSummary:
    """Counts of one source's ingest output (kept = not excluded)."""

    source: str
    adapter: str
    ingested: bool = False
    total: int = 0
    kept: int = 0
    splits: Counter[str] = field(default_factory=Counter)
    emotions: Counter[str] = field(default_factory=Counter)
    aus_present: Counter[int] = field(default_factory=Counter)
    aus_known: Counter[int] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)


def list_adapters(stages: dict[str, type[Stage]] | None = None) -> list[AdapterInfo]:
    """Every registered ingest adapter (``available_stages("ingest")`` by default) with its corpus and layout."""
    from fea20k.ingest.base import IngestAdapter
    from fea20k.stage import available_stages

    out = []
    for name, cls in (stages if stages is not None else available_stages("ingest")).items():
        if not issubclass(cls, IngestAdapter):
            continue
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append(AdapterInfo(name=name.split(".", 1)[1], corpus=cls.corpus or "-", layout=cls.layout.strip(),
                               summary=doc[0] if doc else "", conventions=dict(cls.CONVENTIONS)))
    return out


def summarize_source(source: str, adapter: str, stage_dir: Path) -> SourceSummary:
    """Count one source's ingest output part by part, reading only the columns needed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from fea20k.io import StageOutput

    s = SourceSummary(source=source, adapter=adapter)
    parts = StageOutput([stage_dir]).parts if stage_dir.is_dir() else []
    s.ingested = bool(parts)
    for part in parts:
        t = pq.read_table(part, columns=list(SUMMARY_COLUMNS))
        s.total += t.num_rows
        excluded = pc.fill_null(pc.equal(t.column("accepted"), False), False)
        kept_t = t.filter(pc.invert(excluded))
        s.kept += kept_t.num_rows
        s.splits.update(_counts(kept_t.column("split")))
        s.emotions.update(_counts(kept_t.column("emotion")))
        aus = kept_t.column("aus").combine_chunks()
        if len(aus):
            keys, items = aus.keys, aus.items
            s.aus_present.update(_counts(keys.filter(pc.fill_null(pc.equal(items, 1), False))))
            s.aus_known.update(_counts(keys.filter(pc.is_valid(items))))
        reasons = t.filter(excluded).column("reasons").combine_chunks()
        if len(reasons):
            s.excluded.update(_counts(pc.list_flatten(reasons)))
    return s


def _counts(arr: object) -> Counter:
    import pyarrow.compute as pc

    out: Counter = Counter()
    for item in pc.value_counts(arr).to_pylist():  # type: ignore[arg-type]
        if item["values"] is not None:
            out[item["values"]] += item["counts"]
    return out


def workspace_summaries(workspace: Path, round_: int = 0) -> list[SourceSummary]:
    """A summary of every configured source of a workspace, from ``.fea20k/rounds/<round>/ingest/<source>/``."""
    from fea20k.workspace import Workspace

    ws = Workspace(workspace)
    return [summarize_source(name, src.adapter, ws.stage_dir(round_, f"ingest/{name}"))
            for name, src in ws.config.sources.items()]


# ---------------------------------------------------------------------------------------------- tables


def adapters_table(adapters: list[AdapterInfo]) -> Table:
    """Adapter, corpus, and the expected release layout."""
    from rich.table import Table

    t = Table(title="Ingest adapters (set `adapter = ...` per \\[sources.*] in fea20k.toml)", show_lines=True)
    t.add_column("adapter", style="bold")
    t.add_column("corpus")
    t.add_column("expected layout")
    t.add_column("conventions (default options)")
    for a in adapters:
        conv = "\n".join(f"{k}: {v}" for k, v in a.conventions.items()) or "-"
        t.add_row(a.name, a.corpus, f"{a.summary}\n{a.layout}" if a.summary else a.layout, conv)
    return t


def sources_table(summaries: list[SourceSummary]) -> Table:
    """One row per source: records, kept, kept per split, excluded."""
    from rich.table import Table

    t = Table(title="Sources (round 0 ingest)")
    for col in ("source", "adapter", "records", "kept", *SPLITS, "excluded"):
        t.add_column(col, justify="left" if col in ("source", "adapter") else "right")
    for s in summaries:
        if not s.ingested:
            t.add_row(s.source, s.adapter, "[dim]not ingested[/dim]", "", "", "", "", "")
            continue
        t.add_row(s.source, s.adapter, str(s.total), str(s.kept), *(str(s.splits.get(x, 0)) for x in SPLITS),
                  str(s.total - s.kept))
    return t


def emotions_table(summaries: list[SourceSummary]) -> Table:
    """Kept records per emotion (rows) and source (columns)."""
    from rich.table import Table

    done = [s for s in summaries if s.ingested]
    t = Table(title="Kept records by emotion")
    t.add_column("emotion")
    for s in done:
        t.add_column(s.source, justify="right")
    names = sorted({e for s in done for e in s.emotions})
    for e in names:
        t.add_row(e, *(str(s.emotions.get(e, 0)) for s in done))
    t.add_row("[dim]none[/dim]", *(str(s.kept - sum(s.emotions.values())) for s in done))
    return t


def aus_table(summaries: list[SourceSummary]) -> Table:
    """Per AU and source: kept records with the AU present / with the AU known (0 or 1)."""
    from rich.table import Table

    done = [s for s in summaries if s.ingested and s.aus_known]
    t = Table(title="AUs: present / known (kept records)")
    t.add_column("AU")
    for s in done:
        t.add_column(s.source, justify="right")
    for au in sorted({a for s in done for a in s.aus_known}):
        t.add_row(f"AU{au}", *(f"{s.aus_present.get(au, 0)} / {s.aus_known.get(au, 0)}" if au in s.aus_known
                                else "-" for s in done))
    return t


def exclusions_table(summaries: list[SourceSummary]) -> Table:
    """Excluded records by source and reason."""
    from rich.table import Table

    t = Table(title="Exclusions by reason")
    for col in ("source", "reason", "records"):
        t.add_column(col, justify="right" if col == "records" else "left")
    for s in summaries:
        for reason, n in sorted(s.excluded.items(), key=lambda kv: (-kv[1], kv[0])):
            t.add_row(s.source, reason, str(n))
    return t


def workspace_tables(summaries: list[SourceSummary]) -> list[Table]:
    """The four tables of ``fea20k sources -w DIR``."""
    return [sources_table(summaries), emotions_table(summaries), aus_table(summaries), exclusions_table(summaries)]
