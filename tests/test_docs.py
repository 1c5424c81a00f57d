"""Documentation that enforces itself: every stage and every CLI command is documented and named in the README, and
every page and section of docs/ that the code cites exists."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from fea20k.cli import app
from fea20k.stage import available_stages


README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_registered_stage_has_a_docstring_and_is_in_the_readme() -> None:
    for name, cls in available_stages().items():
        if cls.__module__.startswith(("tests.", "fea20k_plugins.")):
            continue  # toy stages of the test suite, and workspace plugins its tests load
        assert (cls.__doc__ or "").strip(), f"stage {name} has no docstring"
        assert f"`{name}`" in README, f"stage {name} is not named in README.md"


def test_every_cli_command_is_in_the_readme() -> None:
    group = typer.main.get_command(app)
    for name in group.commands:  # type: ignore[attr-defined]
        assert f"fea20k {name}" in README, f"command `fea20k {name}` is not in README.md"


# ------------------------------------------------------------------------------------------ the docs the code cites

ROOT = Path(__file__).resolve().parent.parent
# where citations live: the package (code and its data files), the curator data folders, the tests, the benchmarks
CITING = ("fea20k", "pipelines", "annotators", "validators", "cards", "tests", "bench")
CITING_SUFFIXES = {".py", ".json", ".toml", ".md", ".j2"}
# "docs/corpora.md §8", "``docs/facial-r1.md`` §4.2-4.4", "docs/corpora.md §1, §2, §14", "docs/style.md P1-P3"
CITATION_RE = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)`*((?:(?:[ ,/-]|and)*§[0-9]+(?:\.[0-9]+)?[a-z]?)*)( P[0-9]+)?")
SECTION_RE = re.compile(r"§([0-9]+(?:\.[0-9]+)?[a-z]?)")
# a doc named without its folder ("corpora.md §8") or a page that is not in the repository
BARE_RE = re.compile(r"(?<![\w/.-])(?:corpora|facial-r1|style|engine|prompt-contract)\.md|ARCHITECTURE\.md")


def _citing_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in CITING:
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in CITING_SUFFIXES
                  and "__pycache__" not in p.parts]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def _citations() -> list[tuple[str, str, str, str | None]]:
    """(where, doc name, sections text, style rule) of every ``docs/<name>.md`` citation."""
    out = []
    for path in _citing_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in CITATION_RE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{path.relative_to(ROOT)}:{line}", m.group(1), m.group(2), m.group(3)))
    return out


def _headings(doc: Path) -> set[str]:
    """Section numbers of a page's headings: "## 8. DISFA" -> "8", "### 13.3 Exclusion reasons" -> "13.3"."""
    heads = re.findall(r"^#{2,4} ([0-9]+(?:\.[0-9]+)?[a-z]?)[. ]", doc.read_text(encoding="utf-8"), re.MULTILINE)
    return set(heads)


def test_every_doc_cited_exists() -> None:
    cites = _citations()
    assert any(where.startswith("fea20k") for where, *_ in cites), "no docs/ citation found: the pattern is stale"
    missing = sorted({f"{where}: docs/{name}" for where, name, _, _ in cites if not (ROOT / "docs" / name).is_file()})
    assert not missing, "cited pages missing from docs/:\n" + "\n".join(missing)


def test_every_cited_section_exists() -> None:
    bad = []
    for where, name, sections, rule in _citations():
        doc = ROOT / "docs" / name
        if not doc.is_file():
            continue  # test_every_doc_cited_exists reports it
        heads = _headings(doc)
        bad += [f"{where}: docs/{name} §{s}" for s in SECTION_RE.findall(sections) if s not in heads]
        if rule and f"**{rule.strip()}." not in doc.read_text(encoding="utf-8"):
            bad.append(f"{where}: docs/{name}{rule}")
    assert not bad, "cited sections missing:\n" + "\n".join(bad)


def test_docs_are_cited_by_their_path() -> None:
    bare = []
    for path in _citing_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if BARE_RE.search(line):
                bare.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not bare, "cite docs as docs/<name>.md (pages outside the repository do not exist for a reader):\n" + \
        "\n".join(bare)
