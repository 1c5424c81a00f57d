"""The dataset card: source licence terms (``cards/sources.toml``), the image policy, and the rendered README.

The card is ``cards/dataset_card.md.j2`` (Jinja2) rendered from :class:`~fea20k.publish.facts.ReleaseFacts` and the
workspace's configuration. Only names, counts and hashes reach it: no local path, no key, no user name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from fea20k.config import StrictModel, load_toml_model
from fea20k.publish.facts import NO_EMOTION, ReleaseFacts


SYNTHETIC_KEY = "synthetic"


class SourceTerms(StrictModel):
    """Licence terms and citation of one corpus (a ``[sources.<adapter>]`` table)."""

    name: str
    licence: str
    url: str = ""
    redistribute_images: bool = False
    citation: str = ""


class ReleaseTerms(StrictModel):
    """The ``[release]`` table: the dataset's name and the licence declared for the annotations."""

    pretty_name: str = "FEA-20K-style facial emotion analysis dataset"
    license: str = "other"
    annotation_licence: str = "see the source corpora's terms"


class SourcesFile(StrictModel):
    """The whole ``cards/sources.toml``."""

    release: ReleaseTerms = Field(default_factory=ReleaseTerms)
    sources: dict[str, SourceTerms] = Field(default_factory=dict)


def load_sources_file(path: Path) -> SourcesFile:
    """Read and validate ``cards/sources.toml`` (unknown keys are errors naming the file)."""
    return load_toml_model(path, SourcesFile)


@dataclass(frozen=True)
class SourceFacts:
    """What the card and the image policy know about one configured source."""

    source: str  # the name in fea20k.toml
    corpus: str  # its adapter
    synthetic: bool
    terms: SourceTerms | None  # None: the adapter has no entry in sources.toml
    conventions: dict[str, str] = field(default_factory=dict)  # how its adapter read the labels

    @property
    def redistributable(self) -> bool:
        """True when the faces may be published without the user's explicit confirmation."""
        return self.synthetic or (self.terms is not None and self.terms.redistribute_images)

    def card_entry(self) -> dict[str, Any]:
        t = self.terms
        return {
            "source": self.source,
            "corpus": self.corpus,
            "synthetic": self.synthetic,
            "name": (f"{t.name}, in the {self.corpus} release layout" if self.synthetic and t else
                     t.name if t else self.corpus),
            "licence": t.licence if t else "licence unknown: check the corpus owner's terms before any use",
            "url": t.url if t else "",
            "citation": t.citation.strip() if t else "",
            "conventions": self.conventions,
        }


def source_facts(ws_sources: dict[str, Any], terms: SourcesFile,
                 conventions: dict[str, dict[str, str]] | None = None) -> dict[str, SourceFacts]:
    """Facts of every configured source (``ws_sources`` = ``WorkspaceConfig.sources``; ``conventions``: per source,
    what its adapter applies, see :func:`source_conventions`)."""
    out = {}
    for name, cfg in ws_sources.items():
        key = SYNTHETIC_KEY if cfg.synthetic else cfg.adapter
        out[name] = SourceFacts(source=name, corpus=cfg.adapter, synthetic=cfg.synthetic,
                                terms=terms.sources.get(key), conventions=(conventions or {}).get(name, {}))
    return out


def source_conventions(ws: Any, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The conventions each named source's adapter applies with its configured options."""
    from fea20k.engine import source_stage

    out = {}
    for name in names:
        stage = source_stage(ws, name)
        out[name] = stage.conventions() if hasattr(stage, "conventions") else {}
    return out


def blocked_sources(facts: dict[str, SourceFacts], sources: set[str], confirmed: set[str]) -> list[SourceFacts]:
    """The sources among ``sources`` whose faces may not be published: not synthetic, not redistributable by their
    licence, and not confirmed by the user (``--i-have-redistribution-rights``)."""
    blocked = []
    for name in sorted(sources):
        f = facts.get(name)
        if f is None:
            f = SourceFacts(source=name, corpus="?", synthetic=False, terms=None)
        if not f.redistributable and name not in confirmed:
            blocked.append(f)
    return blocked


def card_context(*, facts: ReleaseFacts, round_: int, sources: list[SourceFacts], release: ReleaseTerms,
                 include_images: bool, emotions: tuple[str, ...], au_names: dict[int, str], recipe_name: str,
                 recipe_sha256: str, curation_sha256: str, fea20k_version: str, front_matter: str,
                 n_rejected: int | None) -> dict[str, Any]:
    """The variables the card template sees."""
    acc = facts.rounds.get(round_)
    by_class = []
    if acc is not None:
        for cls in sorted(acc.by_class, key=lambda c: (c == NO_EMOTION, c)):
            n, k = acc.by_class[cls], acc.accepted_by_class[cls]
            by_class.append({"emotion": cls, "evaluated": n, "accepted": k, "rate": k / n if n else None})
    rounds = [{"round": r, "evaluated": a.evaluated, "accepted": a.accepted, "rate": a.rate}
              for r, a in sorted(facts.rounds.items())]
    annotators = [{"annotator": a, "backend": b, "model": m, "n": n}
                  for (a, b, m), n in sorted(facts.annotators.items())]
    rejected = [{"source": s, "reason": r, "n": n} for (s, r), n in sorted(facts.rejected_reasons.items())]
    return {
        "name": release.pretty_name,
        "round": round_,
        "front_matter": front_matter,
        "fea20k_version": fea20k_version,
        "recipe_name": recipe_name,
        "recipe_sha256": recipe_sha256,
        "curation_sha256": curation_sha256,
        "annotation_licence": release.annotation_licence,
        "include_images": include_images,
        "split_totals": facts.split_totals(),
        "n_rejected": n_rejected,
        "sources": [s.card_entry() for s in sources],
        "all_synthetic": bool(sources) and all(s.synthetic for s in sources),
        "emotions": list(emotions),
        "au_names": au_names,
        "counts": facts.table_counts(),
        "au_table": facts.au_table(),
        "annotators": annotators,
        "any_rules": any(b == "rules" for (_, b, _) in facts.annotators),
        "gold_in_prompt": dict(facts.gold_in_prompt),
        "rounds": rounds,
        "by_class": by_class,
        "rejected_reasons": rejected,
        "reviews": dict(sorted(facts.reviews.items())),
    }


def render_card(template_path: Path, context: dict[str, Any]) -> str:
    """Render the card template (strict: an undefined variable is an error naming the template)."""
    return load_card_template(template_path).render(context)


@dataclass(frozen=True)
class CardTemplate:
    """A compiled card template (:func:`load_card_template`); :meth:`render` reports errors with its path."""

    path: Path
    template: Any

    def render(self, context: dict[str, Any]) -> str:
        import jinja2

        try:
            return self.template.render(**context)
        except jinja2.TemplateError as e:
            raise _template_error(self.path, e) from None


def load_card_template(template_path: Path) -> CardTemplate:
    """Read and compile the card template (Jinja2, strict undefined, Markdown: no autoescape)."""
    import jinja2

    from fea20k.errors import ConfigError

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)  # noqa: S701 - Markdown, not HTML
    try:
        return CardTemplate(template_path, env.from_string(template_path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ConfigError(f"{template_path}: card template not found; restore it from the fea20k package") from None
    except jinja2.TemplateError as e:
        raise _template_error(template_path, e) from None


def _template_error(template_path: Path, e: Exception) -> Exception:
    from fea20k.errors import ConfigError

    lineno = getattr(e, "lineno", None)
    where = f"{template_path}:{lineno}" if lineno else str(template_path)
    return ConfigError(f"{where}: card template error: {e}")
