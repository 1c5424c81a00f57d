"""Stage base classes, the stage context and the registry by name (docs/style.md P1-P3).

Three kinds of stage, all consuming and producing lists of :class:`~fea20k.record.FaceRecord`:

* :class:`SourceStage` (ingest): ``iter_records()`` reads a corpus and yields records; the engine chunks them.
* :class:`MapStage` (align, annotate, validate...): ``process(batch)`` is a pure batch function returning one
  record per input record, in order. Records already excluded upstream are passed through untouched. A map stage
  with ``workers = "process"`` runs chunk by chunk on a process pool; the same function runs on Ray Data.
* :class:`AggregateStage` (select, publish...): ``run(inputs)`` sees the whole upstream output (streamed) and
  yields output chunks (or nothing, for a sink).

A stage is configured by a pydantic model (``Config``) that rejects unknown keys, does heavy initialisation in
``load()`` (never in ``__init__``), and names the curator files it reads in ``recipe_files()`` so that editing one
of them changes exactly its signature.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from fea20k.config import StrictModel, validate_model
from fea20k.errors import UnknownStageError, require
from fea20k.record import FaceRecord
from fea20k.stats import StageStats


if TYPE_CHECKING:
    import pyarrow as pa

    from fea20k.io import StageOutput
    from fea20k.workspace import Workspace

logger = logging.getLogger(__name__)

FAMILIES = ("ingest", "faces", "select", "annotate", "validate", "publish", "train")


class StageConfig(StrictModel):
    """Base of every stage configuration. ``SIGNATURE_EXCLUDE`` lists knobs that do not change outputs."""

    SIGNATURE_EXCLUDE: ClassVar[frozenset[str]] = frozenset()


@dataclass
class StageContext:
    """What a stage may use at run time: the workspace, the round, its stats and a live-status hook.

    Picklable (only the workspace root, round, stage key and ledger service address travel to worker processes).
    ``ledger_at``: where the build process serves the ledger while the stage runs (set by the engine; see
    :mod:`fea20k.ledger_service`): in any other process ``workspace.ledger`` is then that service's client.
    """

    workspace_root: Path
    round: int
    stage_key: str
    stats: StageStats = field(default_factory=StageStats)
    status_hook: Callable[[str], None] | None = None
    ledger_at: Any = None  # a fea20k.ledger_service.LedgerAddress (not imported here: stage.py stays light)
    # set by the engine for an aggregate stage while the build's process pool runs (see AggregateStage.map_parts)
    pool_map: Any = None  # a fea20k.engine.PoolMap

    @cached_property
    def workspace(self) -> Workspace:
        from fea20k.workspace import Workspace

        return Workspace(self.workspace_root, ledger_at=self.ledger_at)

    def status(self, text: str) -> None:
        """Show a short live status (e.g. 'done 120 · retrying 3 · $0.42') next to the stage's progress bar."""
        if self.status_hook is not None:
            self.status_hook(text)

    def __getstate__(self) -> dict[str, Any]:
        return {"workspace_root": self.workspace_root, "round": self.round, "stage_key": self.stage_key,
                "ledger_at": self.ledger_at}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]


class Stage:
    """Base class of every stage."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    VERSION: ClassVar[str] = "1"  # bump when the code changes what the stage emits
    Config: ClassVar[type[StageConfig]] = StageConfig
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()  # (importable module, extra that installs it)
    # what one worker of this stage needs on a distributed executor (Ray): num_cpus, num_gpus (fractions allowed),
    # memory (bytes); any other key is a custom cluster resource
    resources: ClassVar[dict[str, float]] = {"num_cpus": 1}
    # The record columns the stage looks at and the ones it changes (docs/engine.md, "Stage outputs"). The engine
    # reads only ``reads`` (plus ``writes``, ``id`` and the verdict, which every stage may change) and stores only
    # ``writes``; the rest is read from upstream when a later stage needs it. None: every column (a stage that
    # declares nothing reads and stores whole records, which is always correct, only slower and bigger).
    reads: ClassVar[frozenset[str] | None] = None
    writes: ClassVar[frozenset[str] | None] = None

    def __init__(self, config: StageConfig | dict[str, Any] | None = None, ctx: StageContext | None = None,
                 where: str | None = None) -> None:
        for module, extra in self.requires:
            require(module, extra)
        if isinstance(config, self.Config):
            self.config = config
        else:
            self.config = validate_model(self.Config, config or {}, where or f"recipe [stages.\"{self.name}\"]")
        self.ctx = ctx or StageContext(workspace_root=Path("."), round=0, stage_key=self.name)

    def view_columns(self) -> list[str] | None:
        """The columns the engine reads for this stage (None: all): ``reads`` with ``writes``, ``id``, ``source``
        and the verdict. Override to depend on the configuration (an annotator that never sends the face)."""
        if self.reads is None or self.writes is None:  # whole records out need whole records in
            return None
        from fea20k.io import KEY, VERDICT

        return sorted({KEY, "source", *VERDICT, *self.reads, *self.writes})  # a record needs its source

    # -- hooks
    def recipe_files(self) -> list[Path]:
        """Curator files whose content shapes this stage's output (hashed into its signature)."""
        return []

    def signature_extra(self) -> dict[str, Any]:
        """Anything else that changes outputs and is not in the config (e.g. a source's file fingerprint)."""
        return {}

    def signature_config(self) -> dict[str, Any]:
        """The configuration as it enters the signature: without the knobs that do not change outputs."""
        return self.config.model_dump(mode="json", exclude=set(self.Config.SIGNATURE_EXCLUDE))

    def load(self) -> None:
        """Heavy initialisation (models, clients). Called once per process before the first batch."""

    def close(self) -> None:
        """Release what ``load`` acquired."""

    @property
    def stats(self) -> StageStats:
        """The stats of the chunk being processed (the engine swaps it per chunk)."""
        return self.ctx.stats

    def exclude(self, rec: FaceRecord, *reasons: str) -> FaceRecord:
        """Exclude ``rec`` at this stage with named reasons (counted by the engine)."""
        return rec.exclude(self.name, *reasons)


class SourceStage(Stage):
    """Reads one corpus in its release layout and yields records (bad rows as excluded records).

    Implement ``iter_records`` (one :class:`FaceRecord` at a time), or, for label files of hundreds of thousands of
    rows, the columnar ``iter_tables`` (Arrow tables with :data:`fea20k.schema.SCHEMA`, built with vectorised
    operations); the engine writes those tables straight to Parquet and ``iter_records`` is derived from them.
    """

    kind = "source"

    def iter_records(self) -> Iterator[FaceRecord]:
        """Yield every record of the source, in a deterministic order."""
        if not self.columnar:
            raise NotImplementedError(f"{type(self).__name__} implements neither iter_records nor iter_tables")
        from fea20k.schema import from_arrow

        for table in self.iter_tables():
            yield from from_arrow(table)

    def iter_tables(self) -> Iterator[pa.Table]:
        """Columnar alternative to ``iter_records``: Arrow tables with the record schema, in a deterministic order."""
        raise NotImplementedError

    @property
    def columnar(self) -> bool:
        """Whether this source yields Arrow tables (``iter_tables``) rather than records."""
        return type(self).iter_tables is not SourceStage.iter_tables

    def estimate_count(self) -> int | None:
        """Number of records ``iter_records`` will yield, when cheap to know (for the progress bar)."""
        return None


class MapStage(Stage, ABC):
    """A pure batch function: one output record per input record, same order."""

    kind = "map"
    workers: ClassVar[str] = "inline"  # "process": chunks run on a process pool sized to the cores

    @abstractmethod
    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        """Process the live (not excluded) records of a batch."""

    def run_batch(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        """Pass excluded records through; process the others; keep the input order."""
        live_idx = [i for i, r in enumerate(batch) if not r.excluded]
        if len(live_idx) == len(batch):
            out = self.process(batch)
        else:
            processed = self.process([batch[i] for i in live_idx]) if live_idx else []
            out = list(batch)
            for i, rec in zip(live_idx, processed, strict=True):
                out[i] = rec
        if len(out) != len(batch):
            raise RuntimeError(f"stage {self.name}: process() returned {len(out)} records for {len(batch)}")
        return out

    def settle(self) -> None:
        """Called in the build process once every chunk of the run went through :meth:`process`: work gathered
        over the chunks (the annotate stages' Batch API submission) is sent here. May raise to stop the build."""

    def build_process_only(self) -> str | None:
        """Why this run must stay in the build process (work gathered over the chunks for :meth:`settle` lives in
        the stage instance, which on a cluster would be each worker's), or None. The engine then runs it locally
        whatever the executor."""
        return None


# an aggregate stage's output chunk: records, or an Arrow table of its own columns (see AggregateStage.run)
AggregateChunk: TypeAlias = "list[FaceRecord] | pa.Table"


class AggregateStage(Stage, ABC):
    """Sees the whole upstream output (streamed chunk by chunk) and yields output chunks, or nothing (a sink)."""

    kind = "aggregate"

    @abstractmethod
    def run(self, inputs: StageOutput) -> Iterator[AggregateChunk]:
        """Yield output chunks: lists of records, or Arrow tables holding ``id``, the columns the stage writes and
        the verdict (the columnar path: rows the stage leaves as they are need not become records)."""

    def outputs_present(self) -> bool:
        """For sinks that write outside ``.fea20k`` (a release folder): whether that output still exists."""
        return True

    def map_parts(self, method: str, items: Iterable[Any], *args: Any) -> Iterator[Any]:
        """``getattr(self, method)(item, *args)`` for each item, in order.

        On the build's worker processes when its process pool is running (the engine sets ``ctx.pool_map``; each
        worker builds and loads its own instance of the stage, once per stage run), else in this process. For the
        per-part work of an aggregate that depends only on its arguments (validate's checks): the method must not
        touch ``self.stats`` or other state of this instance, and its items, arguments and result must pickle.
        """
        if self.ctx.pool_map is not None:
            return self.ctx.pool_map(method, items, *args)
        work = getattr(self, method)
        return (work(item, *args) for item in items)


# ---------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Stage]] = {}
_discovered = False


def register_stage(name: str) -> Callable[[type[Stage]], type[Stage]]:
    """Class decorator: register a stage under ``name`` (``family.thing``, e.g. ``faces.align``)."""

    def deco(cls: type[Stage]) -> type[Stage]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"stage name {name!r} registered twice: {existing} and {cls}")
        cls.name = name
        cls.family = name.split(".", 1)[0]
        _REGISTRY[name] = cls
        return cls

    return deco


def _discover() -> None:
    """Import every stage module of the package (cheap: heavy imports are lazy) and installed plugins."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for family in FAMILIES:
        pkg = importlib.import_module(f"fea20k.{family}")
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"fea20k.{family}.{mod.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group="fea20k.stages"):
        ep.load()


def load_workspace_plugins(root: Path) -> list[str]:
    """Import the ``*.py`` plugin modules of a workspace's ``annotators/`` and ``validators/`` by file path."""
    loaded = []
    for folder in ("annotators", "validators"):
        for path in sorted((Path(root) / folder).glob("*.py")):
            mod_name = f"fea20k_plugins.{folder}.{path.stem}"
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
            loaded.append(str(path))
    return loaded


def get_stage_class(name: str) -> type[Stage]:
    """The stage registered under ``name``; an unknown name lists what is available."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownStageError(f"unknown stage {name!r}. Available: {sorted(_REGISTRY)}") from None


def available_stages(family: str | None = None) -> dict[str, type[Stage]]:
    _discover()
    return {k: v for k, v in sorted(_REGISTRY.items()) if family is None or v.family == family}
