"""Publish commands: publish (folder or Hub), export (training formats), materialize (faces from your corpora)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fea20k.cli.app import QuietOpt, RoundOpt, WaitOpt, WorkspaceOpt, app, console, setup_logging, writing


def _hub_api_factory():  # noqa: ANN202 - a seam for tests: returns a zero-argument HfApi factory
    from fea20k.publish.hub import default_api_factory

    return default_api_factory


@app.command()
def publish(
    round_: RoundOpt = 0,
    workspace: WorkspaceOpt = Path("."),
    to: Annotated[Path | None, typer.Option("--to", help="Write the release into this folder (load_dataset(DIR)).",
                                            file_okay=False)] = None,
    repo: Annotated[str | None, typer.Option("--repo", help="Upload to this Hub dataset repo (ORG/NAME).")] = None,
    private: Annotated[bool | None, typer.Option("--private/--public",
                                                 help="Visibility of a new Hub repo (default: [publish] private).")
                       ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be written/uploaded; send nothing.")
                       ] = False,
    include_images: Annotated[bool, typer.Option(
        "--include-images", help="Embed the aligned faces (only for sources whose licence allows it, or confirmed).")
    ] = False,
    rights: Annotated[list[str] | None, typer.Option(
        "--i-have-redistribution-rights", metavar="SOURCE",
        help="Confirm you may redistribute this source's faces (repeat the flag per source).")] = None,
    wait: WaitOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Publish round N's release: refresh releases/round-N, then copy it to --to DIR or upload it to --repo."""
    from fea20k.errors import Fea20kUserError

    setup_logging(workspace, quiet)
    if to is not None and repo is not None:
        raise Fea20kUserError("pass either --to DIR or --repo ORG/NAME, not both")
    with writing(workspace, wait):
        _publish(round_, workspace, to, repo, private, dry_run, include_images, rights)


def _publish(round_: int, workspace: Path, to: Path | None, repo: str | None, private: bool | None, dry_run: bool,
             include_images: bool, rights: list[str] | None) -> None:
    from fea20k.publish.hub import publish_to_hub
    from fea20k.publish.local import build_release, release_manifest
    from fea20k.workspace import Workspace

    ws = Workspace(workspace)
    folder = ws.release_dir(round_)
    manifest = release_manifest(folder)
    confirmed = list(rights or [])
    if manifest is None or (include_images and not manifest.get("include_images")):
        summary = build_release(ws, round_, include_images=True if include_images else None, confirmed=confirmed)
        console.print(f"built releases/round-{round_}: {summary.rows} "
                      f"({'with faces' if summary.include_images else 'annotations-only'}); {summary.notes_summary}")
        manifest = release_manifest(folder) or {}
    mode = "with faces" if manifest.get("include_images") else "annotations-only"
    if to is not None:
        _publish_to_folder(ws, folder, to, round_, dry_run, mode)
    elif repo is not None:
        vis = ws.config.publish.private if private is None else private
        result = publish_to_hub(folder, repo, round_, private=vis, dry_run=dry_run, api_factory=_hub_api_factory())
        if dry_run:
            console.print(f"[bold]dry run[/bold]: would upload {len(result.files)} file(s) ({mode}) to dataset "
                          f"{repo} ({'private' if vis else 'public'}) in one commit {result.commit_message!r}, "
                          f"then tag {result.tag}")
            for path, size in result.files:
                console.print(f"  {path}  {size:,} B", highlight=False)
        else:
            ws.ledger.record_release(round_, repo, result.tag, result.commit)
            console.print(f"published {result.tag} to {repo}: commit {result.commit}, {len(result.files)} file(s), "
                          f"{len(result.deleted)} stale file(s) removed ({mode})")
    else:
        console.print(f"release round-{round_} is in {folder} ({mode}); pass --to DIR or --repo ORG/NAME to "
                      "publish it")


def _publish_to_folder(ws, folder: Path, to: Path, round_: int, dry_run: bool, mode: str) -> None:  # noqa: ANN001
    import shutil

    from fea20k.errors import Fea20kUserError
    from fea20k.publish.hub import release_files
    from fea20k.publish.local import building_dir

    files = release_files(folder)
    to = to.expanduser()
    if dry_run:
        console.print(f"[bold]dry run[/bold]: would write {len(files)} file(s) ({mode}) to {to}")
        for rel, p in files:
            console.print(f"  {rel}  {p.stat().st_size:,} B", highlight=False)
        return
    if to.exists() and any(to.iterdir()) and not (to / "README.md").is_file():
        raise Fea20kUserError(f"--to {to}: the folder exists and is not a release; pass a new or empty folder")
    with building_dir(to) as tmp:
        for rel, p in files:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)
    ws.ledger.record_release(round_, str(to.resolve()), None)
    console.print(f"wrote release round-{round_} ({mode}, {len(files)} files) to {to}; "
                  f"load it with datasets.load_dataset({str(to)!r})")


@app.command()
def export(
    round_: RoundOpt = 0,
    fmt: Annotated[str, typer.Option("--format", "-f", help="facial-r1 (JSONL + images + config.json) or messages.")
                   ] = "facial-r1",
    workspace: WorkspaceOpt = Path("."),
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default exports/round-N/FORMAT).",
                                             file_okay=False)] = None,
    annotator: Annotated[str | None, typer.Option(
        "--annotator", help="Render the prompts with this annotator's contract (default: the recipe's "
                            "annotate.regenerate annotator, the one that will ask the trained model).")] = None,
    wait: WaitOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export round N's accepted TRAIN rows (never test) for training: Facial-R1 JSONL or chat messages, each row
    with the exact prompt the trained model is later asked with."""
    from fea20k.prompt import CONTRACT_FILE, read_contract_file
    from fea20k.publish.export import export_round
    from fea20k.workspace import Workspace

    setup_logging(workspace, quiet)
    with writing(workspace, wait):
        summary = export_round(Workspace(workspace), round_, fmt, out, annotator=annotator)
    total = sum(summary.rows.values())
    contract = read_contract_file(summary.folder) or {}
    console.print(f"exported {total} train row(s) as {fmt} to {summary.folder} "
                  f"(prompt contract {contract.get('id', '-')}, in {CONTRACT_FILE}) "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(summary.rows.items()))}); "
                  f"{summary.skipped_test} test row(s) withheld"
                  + (f"; {summary.reviewer_edits} with the rationale a reviewer edited" if summary.reviewer_edits
                     else "")
                  + (f"; {len(summary.missing)} without a face (missing_faces.txt)" if summary.missing else ""))


@app.command()
def materialize(
    release: Annotated[Path, typer.Argument(help="A fea20k release folder, or Facial-R1 JSONL (file or folder).")],
    root: Annotated[list[str] | None, typer.Option(
        "--root", metavar="NAME=PATH", help="Where your copy of source NAME unpacked (repeat per source).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output dataset folder (default RELEASE-materialized).",
                                             file_okay=False)] = None,
    wait: WaitOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Rebuild the faces of an annotations-only release from your own corpora, through faces.align."""
    from contextlib import nullcontext

    from fea20k.lock import enclosing_workspace
    from fea20k.publish.materialize import MISSING_FILE, parse_roots
    from fea20k.publish.materialize import materialize as run

    setup_logging(None, quiet)
    roots = parse_roots(list(root or []))
    dest = out if out is not None else release.with_name(f"{release.stem}-materialized")
    ws_root = enclosing_workspace(dest.parent)  # writing into a workspace (its releases/ by default): lock it
    with writing(ws_root, wait) if ws_root is not None else nullcontext():
        summary = run(release, roots, dest)
    console.print(f"materialized {sum(summary.rows.values())} row(s) into {dest} {summary.rows}")
    if summary.missing:
        console.print(f"[yellow]{len(summary.missing)} row(s) without an image[/yellow] (listed in "
                      f"{dest / MISSING_FILE}):")
        for rid, reason in summary.missing[:20]:
            console.print(f"  {rid}\t{reason}", highlight=False)
        if len(summary.missing) > 20:
            console.print(f"  … and {len(summary.missing) - 20} more")
