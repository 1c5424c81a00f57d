"""Base of every ingest adapter: configuration (source name, root), layout checks, record helpers.

An adapter reads one corpus in one release layout, exactly as it unpacked (``docs/corpora.md``), and yields one
:class:`~fea20k.record.FaceRecord` per face. Bad rows become excluded records with a reason (docs/corpora.md §13.3),
never exceptions; a root that is not the expected layout is a :class:`~fea20k.errors.SourceLayoutError` naming the
layout expected and what was found.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from fea20k.errors import SourceLayoutError
from fea20k.ingest._common import IMAGE_MISSING, DirIndex, check_image
from fea20k.record import FaceRecord, ImageRef
from fea20k.stage import SourceStage, StageConfig


logger = logging.getLogger(__name__)


class IngestConfig(StageConfig):
    """Every adapter gets ``source`` (the name in fea20k.toml, first part of every id) and ``root``."""

    source: str
    root: Path


class IngestAdapter(SourceStage):
    """Base class of ingest adapters. Subclasses set ``corpus`` and ``layout`` and implement ``iter_records``."""

    Config: ClassVar[type[IngestConfig]] = IngestConfig
    corpus: ClassVar[str] = ""  # e.g. "rafdb_basic"
    layout: ClassVar[str] = ""  # the expected tree, shown by `fea20k sources` and in layout errors
    # the conventions the adapter applies (label order, class set, AU presence threshold, split rule, ...): shown by
    # `fea20k sources` and on the release card, so a consumer can tell how each label was read
    CONVENTIONS: ClassVar[dict[str, str]] = {}
    # The pixel frame the source's landmarks and boxes refer to: "stored" = the pixels as stored in the file, the
    # EXIF orientation tag ignored. Every adapter is "stored": docs/corpora.md gives every corpus's points "in
    # original-image pixels" of the released files (RAF, AffectNet) or of video frames and .mat crops that carry
    # no tag (DISFA, DISFA+, BP4D, FER); the released images are re-encoded crops that rarely keep the tag; FABA's
    # frame is not documented either way (unverified). faces.image_io decodes every path (full, reduced,
    # unchanged, PIL) without applying the tag, so landmarks land on the decoded pixels. A source whose points
    # were computed on the rotated image would need "exif" here and in faces.image_io; none is known.
    image_orientation: ClassVar[str] = "stored"
    config: IngestConfig

    def conventions(self) -> dict[str, str]:
        """:attr:`CONVENTIONS` as this instance's configuration sets them (adapters with options override it)."""
        return dict(self.CONVENTIONS)

    @property
    def root(self) -> Path:
        return Path(self.config.root)

    @property
    def source(self) -> str:
        return self.config.source

    def signature_config(self) -> dict[str, object]:
        """The root enters the signature relative to the workspace when inside it, so a copied or moved workspace
        (with its corpora) stays up to date."""
        cfg = super().signature_config()
        root = self.root.resolve()
        try:
            cfg["root"] = str(root.relative_to(Path(self.ctx.workspace_root).resolve()))
        except ValueError:
            cfg["root"] = str(root)
        return cfg

    def check_layout(self, *required: str) -> None:
        """Raise a :class:`SourceLayoutError` unless the root exists and holds every ``required`` relative path."""
        if not self.root.is_dir():
            raise SourceLayoutError(
                f"source {self.source!r}: root {self.root} does not exist; set [sources.{self.source}] root in "
                f"fea20k.toml to the folder where {self.corpus} unpacked"
            )
        missing = [r for r in required if not (self.root / r).exists()]
        if missing:
            found = sorted(p.name for p in self.root.iterdir())[:12]
            raise SourceLayoutError(
                f"source {self.source!r} ({self.corpus}): {self.root} is not the expected layout; missing "
                f"{missing}; expected:\n{self.layout.strip()}\nfound: {found}"
            )

    def make_record(self, relpath: str, frame: int | None = None, **fields: object) -> FaceRecord:
        """A record with the deterministic id ``{source}/{relpath without extension}[#frame]`` and its image ref."""
        stem = relpath.rsplit(".", 1)[0] if "." in relpath.rpartition("/")[2] else relpath  # posix relpath
        rid = f"{self.source}/{stem}" + (f"#{frame}" if frame is not None else "")
        rec = FaceRecord(id=rid, source=self.source, image=ImageRef(root=self.source, path=relpath, frame=frame),
                         **fields)  # type: ignore[arg-type]
        rec.meta.setdefault("corpus", self.corpus)
        return rec

    def check_listed_image(self, rec: FaceRecord, index: DirIndex, relpath: str, listed_at: str) -> FaceRecord:
        """Find the image a label file lists (``relpath``, under the source root) and check it is readable;
        ``rec`` excluded (image_missing / image_undecodable, with a warning naming where it was listed) when not."""
        hit = index.lookup(relpath)
        if hit is None:
            return self.exclude(rec, IMAGE_MISSING)
        problem = check_image(self.root / hit[0], hit[1])
        if problem is not None:
            logger.warning("%s: %s (listed at %s); the record is excluded (%s); re-extract the file from the release "
                           "archive", self.root / hit[0], problem[1], listed_at, problem[0])
            rec.meta["image_error"] = problem[1]
            return self.exclude(rec, problem[0])
        return rec

    def read_landmarks_npy(self, path: Path, n_values: int) -> list[list[float]] | None:
        """The points of a landmark ``.npy`` file (``n_values`` numbers, x;y interleaved) as ``[[x, y], ...]``; None
        when it is missing (counted as ``landmarks_missing``), unreadable or of another size (a warning naming the
        file): the record keeps no landmarks."""
        import numpy as np

        if not path.is_file():
            self.stats.add("landmarks_missing")
            return None
        try:
            values = np.load(path, allow_pickle=False).astype(np.float64).reshape(-1)
        except (ValueError, OSError) as e:
            logger.warning("%s: unreadable landmarks (%s); landmarks left empty", path, e)
            return None
        if values.size != n_values:
            logger.warning("%s: %d values, expected %d; landmarks left empty", path, values.size, n_values)
            return None
        return values.reshape(-1, 2).tolist()
