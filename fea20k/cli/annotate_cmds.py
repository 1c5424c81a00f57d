"""``fea20k annotators``: the annotator definitions of a workspace (or the shipped ones), and the prompt one of
them would send for a record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fea20k.cli.app import app, console, err_console


if TYPE_CHECKING:
    from fea20k.annotate.catalog import AnnotatorRow, Preview


@app.command()
def annotators(
    name: Annotated[str | None, typer.Argument(help="One annotator (annotators/NAME.toml): its row, or with "
                                                    "--preview the prompt it sends.")] = None,
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace whose annotators/ to read (default: the annotators "
                                               "shipped with fea20k); adds what each spent, from its ledger.",
                     file_okay=False),
    ] = None,
    show_preview: Annotated[bool, typer.Option("--preview", help="Print the prompt NAME would send for a record "
                                                                 "with the labels below, then its sampling "
                                                                 "parameters (offline backends: the rationale "
                                                                 "they write).")] = False,
    emotion: Annotated[str | None, typer.Option("--emotion", help="Preview: the ground-truth emotion.")] = None,
    aus: Annotated[str | None, typer.Option("--aus", help="Preview: the AUs present, e.g. 4,7,23.")] = None,
    corpus: Annotated[str | None, typer.Option("--corpus", help="Preview: the corpus (adapter) name, which "
                                                                "selects its emotion set, e.g. rafdb_basic.")] = None,
    gold: Annotated[bool, typer.Option("--gold/--no-gold", help="Preview: show the ground-truth block.")] = True,
    feedback: Annotated[str | None, typer.Option("--feedback", help="Preview: the repair prompt after these failed "
                                                                    "checks, e.g. emotion_mismatch,no_au_mentioned."
                                                 )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the listing's rows; the preview's messages "
                                                         "and sampling parameters).")] = False,
) -> None:
    """List the annotator definitions (backend, model, endpoint, limits, prices, key variable, spent so far) and
    check that each loads; exit 2 if one does not. With NAME --preview, print the prompt it would send."""
    from fea20k.errors import Fea20kUserError

    annotators_dir, vocab, ledger = _locate(workspace)
    preview_opts = [opt for opt, v in (("--emotion", emotion), ("--aus", aus), ("--corpus", corpus),
                                       ("--feedback", feedback), ("--no-gold", None if gold else True)) if v]
    if show_preview:
        if name is None:
            raise Fea20kUserError("--preview needs an annotator: fea20k annotators NAME --preview")
        _preview(annotators_dir, vocab, name, emotion=emotion, aus=aus, corpus=corpus, gold=gold,
                 feedback=feedback, as_json=as_json)
        return
    if preview_opts:
        verb = "applies" if len(preview_opts) == 1 else "apply"
        raise Fea20kUserError(f"{', '.join(preview_opts)} only {verb} with --preview: "
                              f"fea20k annotators {name or 'NAME'} --preview {' '.join(preview_opts)} ...")
    _list(annotators_dir, vocab, ledger, name, as_json)


def _locate(workspace: Path | None) -> tuple[Path, Any, Any]:
    """The annotators folder, vocabulary and ledger of ``workspace`` (or the shipped folder, no ledger)."""
    from fea20k.annotate.catalog import default_vocab

    if workspace is None:
        from fea20k.resources import data_path

        annotators_dir, ledger = data_path("annotators"), None
    else:
        from fea20k.workspace import Workspace

        ws = Workspace(workspace)
        annotators_dir, ledger = ws.data_file("annotators"), ws.ledger
    return annotators_dir, default_vocab(annotators_dir), ledger


def _list(annotators_dir: Path, vocab: Any, ledger: Any, name: str | None, as_json: bool) -> None:
    from dataclasses import asdict

    from rich.markup import escape

    from fea20k.annotate.catalog import annotator_rows, annotators_table
    from fea20k.errors import ConfigError, Fea20kUserError

    rows = annotator_rows(annotators_dir, ledger, vocab=vocab)
    if name is not None:
        rows = [r for r in rows if r.name == name]
        if not rows:
            from fea20k.annotate.catalog import annotator_names

            raise ConfigError(f"{annotators_dir}: no annotator {name!r}; available: {annotator_names(annotators_dir)}")
    if as_json:
        typer.echo(json.dumps([{**asdict(r), "file": str(r.file)} for r in rows], indent=1))
    else:
        console.print(annotators_table(rows, title=str(annotators_dir)))
    bad: list[AnnotatorRow] = [r for r in rows if not r.ok]
    for r in bad:
        err_console.print(f"[red]error:[/red] {escape(r.error or '')}", highlight=False, soft_wrap=True)
    if bad:  # exit 2 (fea20k.cli.main), after every row has been shown
        raise Fea20kUserError(f"{len(bad)} of {len(rows)} annotator(s) do not load; fix the file(s) named above")


def _preview(annotators_dir: Path, vocab: Any, name: str, *, emotion: str | None, aus: str | None,
             corpus: str | None, gold: bool, feedback: str | None, as_json: bool) -> None:
    from rich.markup import escape

    from fea20k.annotate.catalog import parse_aus, preview

    codes = [c.strip() for c in feedback.split(",") if c.strip()] if feedback else None
    p = preview(annotators_dir, vocab, name, emotion=emotion, aus=parse_aus(aus) if aus is not None else None,
                corpus=corpus, gold=gold, feedback=codes)
    for note in p.notes:
        err_console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(p.to_json(), indent=1))
        return
    typer.echo(_plain(p))


def _plain(p: Preview) -> str:
    """The preview as plain text: each message part verbatim under a rule, then the sampling parameters."""
    what = f"{p.annotator} ({p.backend}" + (f", {p.model})" if p.model else ")")
    lines: list[str] = []
    if p.offline:
        lines += [f"── {what}: the rationale it writes for this record (offline: no prompt, no model) ──", p.text]
    else:
        for msg in p.messages or []:
            lines.append(f"── {what}: {msg.get('role', 'user')} message ──")
            content = msg.get("content")
            parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
            for part in parts:
                if part.get("type") == "image_url":
                    lines.append(str(part["image_url"]["url"]))
                else:
                    lines.append(str(part.get("text", "")))
        lines.append("── sampling parameters ──")
        lines += [f"{k} = {json.dumps(v)}" for k, v in p.params.items()]
        lines += ["── prompt contract ──",
                  f"{p.prompt_contract} (the id exports, checkpoints and regeneration compare)"]
    lines += ["── emotion set ──", ", ".join(p.emotions)]
    return "\n".join(lines)
