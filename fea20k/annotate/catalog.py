"""What ``fea20k annotators`` shows: the annotator definitions of an ``annotators/`` folder, and the prompt one of
them would send for a given record. Pure functions that return data (and a rich table); only the CLI prints.

:func:`annotator_rows` lists every ``annotators/<name>.toml`` with its backend, model, endpoint, limits, prices,
key variable (its NAME and whether it is set, never its value), what the ledger says it has spent, and a one-line
``error`` when the definition or a file it reads (template, emotion sets, feedback sentences, phrases) does not
load; one broken file never hides the others. :func:`preview` renders the chat messages an annotator would send
for a record built from a few labels (the face image replaced by :data:`IMAGE_PLACEHOLDER`), or, for an offline
backend such as ``rules``, the rationale it would write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fea20k.annotate.spec import AnnotatorSpec, load_annotator
from fea20k.config import read_toml
from fea20k.errors import ConfigError, Fea20kUserError
from fea20k.record import FaceRecord
from fea20k.vocab import Vocab, load_vocab


if TYPE_CHECKING:
    from rich.table import Table

    from fea20k.annotate.backends.base import Backend
    from fea20k.ledger import Ledger

# Where the face goes in a previewed request: the real request carries the aligned crop as a JPEG data URL.
IMAGE_PLACEHOLDER = "<image: the aligned face crop, sent as a data:image/jpeg;base64 URL>"
# The previous reply quoted in a previewed repair prompt.
PREVIOUS_PLACEHOLDER = "<the model's previous reply>"
# Keys of the annotator definitions that name data files of annotators/ (those files are not annotators).
_DATA_FILE_KEYS = ("emotion_sets", "feedback", "phrases", "prompt")


@dataclass
class AnnotatorRow:
    """One annotator definition as ``fea20k annotators`` lists it. ``error``: why it does not load (one line);
    ``note``: why it could not run on this machine now (its backend's ``check()``), which is not a definition
    error. ``calls``/``tokens_*``/``cost``: spent so far over all rounds (None without a ledger)."""

    name: str
    file: Path
    description: str = ""
    backend: str | None = None
    model: str | None = None
    endpoint: str | None = None  # base_url, the vllm checkpoint, or "offline"
    concurrency: int | None = None
    processes: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_attempts: int | None = None
    price_in: float | None = None  # USD per million input tokens
    price_out: float | None = None  # USD per million output tokens
    budget_usd: float | None = None
    key_env: str | None = None  # the NAME of the key's environment variable, never its value
    key_set: bool | None = None  # whether that variable is set (None when the annotator reads no key)
    calls: int | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    error: str | None = None
    note: str | None = None
    prompt_contract: str | None = None  # fea20k.prompt id: what a model trained on its exports is asked with

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Preview:
    """What an annotator would do with one record. ``text``: the prompt as the model reads it (offline backends:
    the rationale they write); ``messages``: the chat messages sent, image replaced by :data:`IMAGE_PLACEHOLDER`
    (None for offline backends); ``params``: the sampling parameters; ``emotions``: the record's emotion set;
    ``notes``: remarks on the inputs (an unknown corpus, a reason code without a sentence, ...)."""

    annotator: str
    backend: str
    model: str | None
    offline: bool
    text: str
    messages: list[dict[str, Any]] | None
    params: dict[str, Any]
    emotions: list[str]
    gold_in_prompt: bool
    record: FaceRecord
    notes: list[str] = field(default_factory=list)
    prompt_contract: str | None = None  # fea20k.prompt id of the text (None for offline backends)

    def to_json(self) -> dict[str, Any]:
        """The JSON ``fea20k annotators NAME --preview --json`` prints."""
        out: dict[str, Any] = {"annotator": self.annotator, "backend": self.backend, "model": self.model,
                               "offline": self.offline, "emotions": self.emotions, "params": self.params,
                               "gold_in_prompt": self.gold_in_prompt, "prompt_contract": self.prompt_contract}
        if self.offline:
            out["reply"] = self.text
        else:
            out["messages"] = self.messages
        if self.notes:
            out["notes"] = self.notes
        return out


# ---------------------------------------------------------------------------------------------- finding them


def _one_line(e: BaseException, base: Path | None = None) -> str:
    """An error as one line, with the folder above ``annotators/`` cut from the paths it names."""
    msg = " ".join(str(e).split())
    if base is not None:
        msg = msg.replace(f"{base}{os.sep}", "")
    return msg


def annotator_files(annotators_dir: Path) -> list[Path]:
    """The annotator definitions in ``annotators_dir``: every top-level ``*.toml`` except the data files the
    annotators refer to (``emotion_sets.toml``, ``feedback.toml`` and any other file named by an ``emotion_sets``,
    ``feedback``, ``phrases`` or ``prompt`` key) and TOML files that share no key with an annotator definition.
    A file that does not parse stays in (it is most likely an annotator being edited)."""
    annotators_dir = Path(annotators_dir)
    fields = set(AnnotatorSpec.model_fields)
    referenced = {str(AnnotatorSpec.model_fields[k].default) for k in ("emotion_sets", "feedback")}
    parsed: dict[Path, dict[str, Any] | None] = {}
    for path in sorted(annotators_dir.glob("*.toml"), key=lambda p: p.stem):
        try:
            data: dict[str, Any] | None = read_toml(path)
        except ConfigError:
            data = None
        parsed[path] = data
        if data is not None and (fields & set(data)):
            referenced.update(str(data[k]) for k in _DATA_FILE_KEYS if isinstance(data.get(k), str))
    referenced_paths = {os.path.normpath(annotators_dir / r) for r in referenced}
    out = []
    for path, data in parsed.items():
        if os.path.normpath(path) in referenced_paths:
            continue
        if data and not (fields & set(data)):
            continue  # a data file of some other kind
        out.append(path)
    return out


def annotator_names(annotators_dir: Path) -> list[str]:
    """Names of the annotators in ``annotators_dir`` (see :func:`annotator_files`)."""
    return [p.stem for p in annotator_files(annotators_dir)]


def default_vocab(annotators_dir: Path) -> Vocab:
    """The vocabulary of the workspace holding ``annotators_dir`` (its ``validators/``), else the shipped one."""
    validators = Path(annotators_dir).parent / "validators"
    return load_vocab(validators if (validators / "vocab.toml").is_file() else None)


def _backend(annotators_dir: Path, spec: AnnotatorSpec, spec_path: Path, vocab: Vocab) -> Backend:
    from fea20k.annotate.backends import get_backend

    cls = get_backend(spec.backend)
    return cls(spec, annotators_dir=annotators_dir, spec_path=spec_path, vocab=vocab)


def _try_out(annotators_dir: Path, spec: AnnotatorSpec, spec_path: Path, vocab: Vocab,
             backend: Backend) -> str | None:
    """Load what the annotator reads and render (or write) for sample records, so template, emotion-set, feedback
    and phrase errors surface here instead of in the middle of a build (the build's own pre-flight,
    :meth:`~fea20k.annotate.task.Task.preflight`). Raises ConfigError. Returns the prompt contract's id (None for
    an offline backend)."""
    from fea20k.annotate.task import DraftTask, sample_records

    if backend.offline:
        try:
            for rec in sample_records(vocab):
                backend.reply(rec)
        except (KeyError, IndexError, ValueError) as e:
            files = ", ".join(str(p) for p in backend.recipe_files()) or str(spec_path)
            raise ConfigError(f"{files}: writing a sample rationale failed: {type(e).__name__}: {e}") from None
        return None
    task = DraftTask(spec, annotators_dir, spec_path, vocab, gold_in_prompt=True)
    task.preflight()
    return task.contract.id


def _row(annotators_dir: Path, path: Path, vocab: Vocab, spent: dict[str | None, dict[str, Any]] | None,
         ) -> AnnotatorRow:
    from fea20k.annotate.backends import get_backend

    base = Path(annotators_dir).parent
    row = AnnotatorRow(name=path.stem, file=path)

    def fail(e: BaseException) -> AnnotatorRow:
        msg = _one_line(e, base)
        rel = path.relative_to(base) if path.is_relative_to(base) else path
        row.error = msg if str(rel) in msg or str(path) in msg else f"{rel}: {msg}"
        return row

    try:
        spec, _ = load_annotator(annotators_dir, path.stem)
    except ConfigError as e:
        try:  # show what the file says, to help find it
            data = read_toml(path)
        except ConfigError:
            data = {}
        row.description, row.backend, row.model = (
            str(data[k]) if isinstance(data.get(k), str) else v
            for k, v in (("description", ""), ("backend", None), ("model", None))
        )
        _fill_spent(row, row.name, spent)
        return fail(e)
    row.description, row.backend, row.model = spec.description, spec.backend, spec.model
    row.max_attempts, row.price_in, row.price_out, row.budget_usd = (
        spec.max_attempts, spec.price_in, spec.price_out, spec.budget_usd)
    row.key_env = spec.api_key_env
    row.key_set = bool(os.environ.get(spec.api_key_env)) if spec.api_key_env else None
    _fill_spent(row, spec.name, spent)
    try:
        cls = get_backend(spec.backend)
    except Fea20kUserError as e:
        return fail(e)
    if cls.offline:
        row.endpoint = "offline"
    else:
        row.endpoint = spec.base_url or spec.checkpoint or (
            "previous round's checkpoint" if not cls.client_processes else None)
        row.concurrency, row.rpm, row.tpm = spec.concurrency, spec.rpm, spec.tpm
        row.processes = spec.processes if cls.client_processes else None
    try:
        backend = _backend(annotators_dir, spec, path, vocab)
        row.prompt_contract = _try_out(annotators_dir, spec, path, vocab, backend)
    except Fea20kUserError as e:
        return fail(e)
    except UnicodeDecodeError as e:
        return fail(ConfigError(f"{path}: a template or data file it reads is not UTF-8 text ({e})"))
    try:
        backend.check()
    except Fea20kUserError as e:  # not ready on this machine (key unset, extra missing, no checkpoint yet)
        row.note = _one_line(e, base)
    return row


def _fill_spent(row: AnnotatorRow, name: str, spent: dict[str | None, dict[str, Any]] | None) -> None:
    if spent is not None:
        c = spent.get(name) or {"calls": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0}
        row.calls, row.tokens_in, row.tokens_out, row.cost = c["calls"], c["tokens_in"], c["tokens_out"], c["cost_usd"]


def annotator_rows(annotators_dir: Path, ledger: Ledger | None = None, *, vocab: Vocab | None = None,
                   ) -> list[AnnotatorRow]:
    """One row per annotator definition in ``annotators_dir``, sorted by file name; an invalid definition gets
    its ``error`` and never stops the others. ``ledger``: the workspace ledger, for what each annotator spent
    (calls, tokens, USD over all rounds). ``vocab``: default, the ``validators/`` beside ``annotators_dir``."""
    annotators_dir = Path(annotators_dir)
    if not annotators_dir.is_dir():
        raise ConfigError(f"{annotators_dir}: no annotators folder; run `fea20k init` to create the default one")
    vocab = vocab if vocab is not None else default_vocab(annotators_dir)
    spent = ledger.cost_by_annotator() if ledger is not None else None
    return [_row(annotators_dir, path, vocab, spent) for path in annotator_files(annotators_dir)]


# ---------------------------------------------------------------------------------------------- table


def _num(v: float | int | None, fmt: str = "{}") -> str:
    return "-" if v is None else fmt.format(v)


def _limits(r: AnnotatorRow) -> str:
    if r.concurrency is None:
        return "-"
    lines = [f"{r.concurrency} in flight" + (f" ({r.processes} processes)" if r.processes and r.processes > 1 else "")]
    lines += [f"{v:,} {unit}" for v, unit in ((r.rpm, "rpm"), (r.tpm, "tpm")) if v is not None]
    return "\n".join(lines)


def _prices(r: AnnotatorRow) -> str:
    if r.price_in is None or (not r.price_in and not r.price_out and r.budget_usd is None):
        return "-"
    return f"{r.price_in:g} / {r.price_out:g}" + ("" if r.budget_usd is None else f"\ncap ${r.budget_usd:g}")


def annotators_table(rows: list[AnnotatorRow], title: str | None = None) -> Table:
    """The rows as a rich table; an invalid annotator's error in red in its row, a readiness note in yellow."""
    from rich.table import Table
    from rich.text import Text

    with_spent = any(r.calls is not None for r in rows)
    table = Table(title=title, show_lines=True)
    for col in ("annotator", "backend", "model", "endpoint", "limits", "attempts", "USD/M in/out", "key",
                *(("spent",) if with_spent else ()), "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        name = Text(r.name, style="bold")
        if r.description:
            name.append(f"\n{r.description}", style="dim")
        if r.key_env is None:
            key = Text("-")
        else:
            key = Text(f"{r.key_env}\n")
            key.append("set" if r.key_set else "unset", style="green" if r.key_set else "yellow")
        if r.error:
            status = Text(r.error, style="red")
        elif r.note:
            status = Text(f"ok; not ready here: {r.note}", style="yellow")
        else:
            status = Text("ok", style="green")
        cells: list[Any] = [name, r.backend or "-", r.model or "-", r.endpoint or "-", _limits(r),
                            _num(r.max_attempts), _prices(r), key]
        if with_spent:
            cells.append("-" if r.calls is None else
                         f"{r.calls:,} calls\n{r.tokens_in:,} in\n{r.tokens_out:,} out\n${r.cost:.4f}")
        cells.append(status)
        table.add_row(*cells)
    return table


# ---------------------------------------------------------------------------------------------- preview


def parse_aus(text: str) -> list[int]:
    """``"4,7,23"`` (or ``"AU4, AU7"``) as sorted AU numbers; anything else is a Fea20kUserError."""
    out = set()
    for tok in text.replace(" ", "").split(","):
        if not tok:
            continue
        num = tok[2:] if tok.upper().startswith("AU") else tok
        if not num.isdigit():
            raise Fea20kUserError(f"--aus {text!r}: {tok!r} is not an AU number; write e.g. --aus 4,7,23")
        out.add(int(num))
    return sorted(out)


def preview_record(vocab: Vocab, *, emotion: str | None = None, aus: list[int] | None = None,
                   corpus: str | None = None) -> FaceRecord:
    """A record carrying only these labels (``aus``: the AUs present, which are also the AUs coded; ``corpus``:
    ``meta["corpus"]``, which selects the corpus's emotion set). Unknown emotions and AUs are Fea20kUserErrors."""
    if emotion is not None:
        canon = emotion if emotion in vocab.emotions else vocab.synonyms.get(emotion.lower())
        if canon is None:
            raise Fea20kUserError(f"unknown emotion {emotion!r}; use one of {list(vocab.emotions)}")
        emotion = canon
    aus = sorted(set(aus or ()))
    unknown = [a for a in aus if a not in vocab.au_names]
    if unknown:
        raise Fea20kUserError(f"unknown AU(s) {unknown}; validators/vocab.toml defines {sorted(vocab.au_names)}")
    rid = "preview/" + "-".join([corpus or "face", emotion or "unlabelled", *(f"au{a}" for a in aus)])
    return FaceRecord(id=rid, source="preview", emotion=emotion, emotion_origin="gt" if emotion else None,
                      aus=dict.fromkeys(aus, 1), au_coded=list(aus), aus_origin="gt" if aus else None,
                      meta={"corpus": corpus} if corpus else {})


def preview(annotators_dir: Path, vocab: Vocab, name: str, *, emotion: str | None = None,
            aus: list[int] | None = None, corpus: str | None = None, gold: bool = True,
            feedback: list[str] | None = None) -> Preview:
    """What annotator ``name`` would send for a record with these labels (see :func:`preview_record`): the
    prompt text, the chat messages (face image replaced by :data:`IMAGE_PLACEHOLDER`), the sampling parameters
    and the emotion set. ``gold``: show the ground-truth block. ``feedback``: reason codes of failed checks; the
    repair prompt of attempt 2 is rendered, with :data:`PREVIOUS_PLACEHOLDER` as the previous reply. For an
    offline backend (``rules``) ``text`` is the rationale it writes for the record."""
    annotators_dir = Path(annotators_dir)
    names = annotator_names(annotators_dir)
    if name not in names:
        raise ConfigError(f"{annotators_dir}: no annotator {name!r}; available: {names}")
    spec, path = load_annotator(annotators_dir, name)
    rec = preview_record(vocab, emotion=emotion, aus=aus, corpus=corpus)
    from fea20k.annotate.task import load_emotion_sets

    _, sets = load_emotion_sets(annotators_dir, spec, path, vocab)
    notes = []
    if corpus and corpus not in sets.corpus:
        notes.append(f"corpus {corpus!r} has no list under [corpus] in {spec.emotion_sets}; the default list applies")
    backend = _backend(annotators_dir, spec, path, vocab)
    if backend.offline:
        if feedback:
            raise Fea20kUserError(f"annotator {name!r} is offline ({spec.backend}): it writes once and is never "
                                  "asked to repair, so --feedback does not apply")
        if not gold:
            notes.append(f"annotator {name!r} writes from the ground truth; --no-gold does not apply")
        reply = backend.reply(rec)
        if reply.note:
            notes.append(reply.note)
        return Preview(annotator=spec.name, backend=spec.backend, model=backend.model, offline=True,
                       text=reply.text or "", messages=None, params={}, emotions=sets.for_record(rec),
                       gold_in_prompt=True, record=rec, notes=notes)

    from fea20k.annotate.task import DraftTask, Feedback

    task = DraftTask(spec, annotators_dir, path, vocab, gold_in_prompt=gold)
    fb = None
    if feedback:
        bare = [c for c in feedback if task.feedback_key(c) is None]
        if bare:
            notes.append(f"reason code(s) {bare} have no sentence in {spec.feedback}; they are quoted as they are")
        fb = Feedback(previous=PREVIOUS_PLACEHOLDER, issues=task.explain(list(feedback)), attempt=2)
    messages = task.format_prompt(rec, fb, image_url=IMAGE_PLACEHOLDER if backend.needs_image else None)
    return Preview(annotator=spec.name, backend=spec.backend, model=backend.model, offline=False,
                   text=task.render(rec, fb), messages=messages, params=spec.sampling(),
                   emotions=task.emotion_set(rec), gold_in_prompt=task.gold(rec) is not None, record=rec,
                   notes=notes, prompt_contract=task.contract.id)
