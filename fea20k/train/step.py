"""Train steps: export the step's accepted train rows, run a configured trainer command, register its checkpoint.

Both stages are :class:`~fea20k.stage.AggregateStage` s that pass their input records through unchanged (so a later
``publish`` step sees them) and train as a side effect. A step is skipped when its signature (config, the command
template, its input's signature, the checkpoint it starts from) is unchanged; a failing trainer raises
:class:`TrainerFailedError`, which leaves the round incomplete, so a ``publish`` step after it never runs.
"""

from __future__ import annotations

import logging
import os
import shlex
import string
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from fea20k.errors import ConfigError, Fea20kUserError, StageError
from fea20k.io import StageOutput, atomic_write_json
from fea20k.record import FaceRecord
from fea20k.stage import AggregateStage, StageConfig, register_stage


logger = logging.getLogger(__name__)

PLACEHOLDERS = ("data", "images", "stats", "base_model", "output_dir", "round", "python", "workspace", "export_dir")
# files that mark a folder as a loadable checkpoint (transformers full model, sharded model, PEFT adapter)
CHECKPOINT_MARKERS = ("config.json", "adapter_config.json", "model.safetensors", "pytorch_model.bin",
                      "model.safetensors.index.json")
_TAIL_LINES = 20


class TrainerFailedError(StageError, Fea20kUserError):
    """The trainer command exited non-zero, timed out or wrote no checkpoint (the CLI prints one line, exit 2)."""


class TrainConfig(StageConfig):
    """Command template, export format, starting model and output folder of a train step.

    ``command`` is a list of arguments (or one string, split like a shell would but run WITHOUT a shell unless
    ``shell = true``) with placeholders {data} {images} {stats} {base_model} {output_dir} {round} {python}
    {workspace} {export_dir}.
    """

    SIGNATURE_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"env", "timeout"})

    command: str | list[str]
    shell: bool = False
    format: Literal["facial-r1", "messages"] = "facial-r1"  # fea20k.publish.export formats
    splits: list[Literal["train", "val"]] = Field(default_factory=lambda: ["train"])  # never "test"
    base_model: str | None = None  # local path (relative to the workspace); never a Hub name (no downloads)
    start_from: str = "base"  # "base" | "previous_round" | the name of an earlier train step of the same round
    output_dir: str = "checkpoints/round-{round}/{stage}"
    min_rows: int = Field(1, ge=0)
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0)


_SFT_COMMAND = ["{python}", "-m", "fea20k.train.sft", "--data", "{data}", "--images", "{images}",
                "--stats", "{stats}", "--base-model", "{base_model}", "--output-dir", "{output_dir}"]
_GRPO_COMMAND = ["{python}", "-m", "fea20k.train.grpo", "--data", "{data}", "--images", "{images}",
                 "--stats", "{stats}", "--base-model", "{base_model}", "--output-dir", "{output_dir}"]


class SFTConfig(TrainConfig):
    command: str | list[str] = Field(default_factory=lambda: list(_SFT_COMMAND))
    start_from: str = "previous_round"


class GRPOConfig(TrainConfig):
    command: str | list[str] = Field(default_factory=lambda: list(_GRPO_COMMAND))
    start_from: str = "train.sft"


class _TrainStep(AggregateStage):
    """Shared machinery of ``train.sft`` and ``train.grpo`` (see their docstrings)."""

    Config = TrainConfig
    config: TrainConfig

    # -- paths and starting point
    @property
    def _where(self) -> str:
        return f"{self.ctx.workspace.recipe_path}: [stages.\"{self.name}\"]"

    def _output_dir(self) -> Path:
        rel = self.config.output_dir.format(round=self.ctx.round, stage=self.name)
        p = Path(rel)
        return p if p.is_absolute() else self.ctx.workspace.root / p

    def _log_file(self) -> Path:
        return self.ctx.workspace.state_dir / "logs" / f"round-{self.ctx.round}-{self.name}.log"

    def start_model(self) -> str | None:
        """The model this step trains from: the base model, round N-1's checkpoint, or an earlier step's."""
        ws = self.ctx.workspace
        start = self.config.start_from
        if start == "previous_round" and self.ctx.round > 0:
            ckpt = ws.ledger.checkpoint(self.ctx.round - 1)
            if ckpt is not None:
                return ckpt
        elif start not in ("base", "previous_round"):
            if not start.startswith("train."):
                raise ConfigError(f"{self._where}: start_from = {start!r}; use 'base', 'previous_round' or the name "
                                  "of an earlier train step of the round (e.g. 'train.sft')")
            ckpt = ws.ledger.checkpoint(self.ctx.round, start)
            if ckpt is not None:
                return ckpt
        if self.config.base_model is None:
            return None
        p = Path(self.config.base_model).expanduser()
        return str(p if p.is_absolute() else ws.root / p)

    def signature_extra(self) -> dict[str, Any]:
        """Round N-1's checkpoint when this step starts from it (known at plan time; same-round steps are upstream),
        and the prompt contract the export is rendered with (an edited template retrains)."""
        contract = self._contract(say=False)
        extra: dict[str, Any] = {"prompt_contract": contract.id if contract is not None else None}
        if self.config.start_from == "previous_round" and self.ctx.round > 0:
            extra["start"] = self.ctx.workspace.ledger.checkpoint(self.ctx.round - 1)
        return extra

    def recipe_files(self) -> list[Path]:
        """Human reviews of rounds 0..N: a row a reviewer rejected is never trained on."""
        from fea20k.publish.reviews import reviews_path

        return [reviews_path(self.ctx.workspace.root, k) for k in range(self.ctx.round + 1)]

    def outputs_present(self) -> bool:
        """Up to date only while the checkpoint this step registered still exists on disk."""
        ckpt = self.ctx.workspace.ledger.checkpoint(self.ctx.round, self.name)
        return ckpt is not None and Path(ckpt).exists()

    # -- the run
    def run(self, inputs: StageOutput) -> Iterator[list[FaceRecord]]:
        ws = self.ctx.workspace
        stage_dir = ws.stage_dir(self.ctx.round, self.ctx.stage_key)
        export_dir = stage_dir / "export"
        rows = self._training_rows(inputs)
        if len(rows) < self.config.min_rows:
            raise TrainerFailedError(
                f"{self.name} (round {self.ctx.round}): {len(rows)} accepted {'/'.join(self.config.splits)} row(s) "
                f"to train on, fewer than min_rows = {self.config.min_rows} ({self._where})")
        contract = self._contract()
        files = export_training_data(rows, export_dir, self.config.format, name=f"round-{self.ctx.round}",
                                     contract=contract)
        out_dir = self._output_dir()
        values = {
            "data": str(files["data"]),
            "images": str(files.get("images", "")),
            "stats": str(files.get("stats", "")),
            "base_model": self.start_model(),
            "output_dir": str(out_dir),
            "round": str(self.ctx.round),
            "python": sys.executable,
            "workspace": str(ws.root),
            "export_dir": str(export_dir),
        }
        argv = render_command(self.config.command, values, self.config.shell, self._where)
        _clear_output_dir(out_dir, ws.root)
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run_trainer(argv, self._log_file(), label=f"{self.name} r{self.ctx.round}", cwd=ws.root,
                    env=self.config.env, timeout=self.config.timeout, shell=self.config.shell)
        ckpt = find_checkpoint(out_dir)
        if ckpt is None:
            raise TrainerFailedError(
                f"{self.name} (round {self.ctx.round}): the trainer exited 0 but left no checkpoint in {out_dir} "
                f"(a folder with config.json or model weights, or checkpoint-*); command: {_show(argv)}; "
                f"output in {self._log_file()}")
        sig_file = stage_dir / "_SIGNATURE"
        signature = sig_file.read_text().strip() if sig_file.is_file() else None
        ws.ledger.record_checkpoint(self.ctx.round, self.name, str(ckpt), signature)
        seconds = time.perf_counter() - t0
        self.stats.add("train_rows", len(rows))
        self.stats.add("train_seconds", round(seconds, 3))
        atomic_write_json(stage_dir / "checkpoint.json", {
            "checkpoint": str(ckpt), "start": values["base_model"], "rows": len(rows), "command": argv,
            "seconds": round(seconds, 3), "export": {k: str(v) for k, v in files.items()}})
        logger.info("%s (round %d): checkpoint %s (%d rows, %.1fs)", self.name, self.ctx.round, ckpt, len(rows),
                    seconds)
        yield from inputs.iter_chunks()

    def _contract(self, say: bool = True) -> Any:
        """The prompt contract of the annotator that asks this checkpoint in round N+1 (see
        :func:`fea20k.publish.export.contract_for_workspace`); None, said in one line, when it asks no prompt."""
        from fea20k.publish.export import contract_for_workspace

        try:
            return contract_for_workspace(self.ctx.workspace)
        except ConfigError as e:
            if say:
                logger.warning("%s (round %d): the export carries no prompt contract: %s", self.name, self.ctx.round,
                               e)
            return None

    def _training_rows(self, inputs: StageOutput) -> list[FaceRecord]:
        """Accepted rows of the configured splits, minus human rejects, with reviewers' edited rationales; test rows
        never (counted, and asserted)."""
        from fea20k.publish.reviews import apply_edit, latest_reviews

        reviews = latest_reviews(self.ctx.workspace.root, range(self.ctx.round + 1))
        keep: list[FaceRecord] = []
        for rec in inputs.iter_records():
            review = reviews.get(rec.id)
            if rec.split == "test":
                self.stats.add("not_exported_test")
            elif rec.accepted is not True:
                self.stats.add("not_exported_rejected")
            elif review is not None and review.decision == "reject":
                self.stats.add("not_exported_human_reject")
            elif rec.split not in self.config.splits:
                self.stats.add(f"not_exported_{rec.split}")
            elif rec.rationale is None or not rec.rationale.text:
                self.stats.add("not_exported_no_rationale")
            else:
                if apply_edit(rec, review):
                    self.stats.add("exported_reviewer_edit")
                keep.append(rec)
        assert all(r.split != "test" for r in keep)
        return keep


@register_stage("train.sft")
class TrainSFT(_TrainStep):
    """Supervised fine-tuning on the accepted train rows so far, as a pipeline step (Facial-R1 stage 1).

    Exports the step's accepted train rows (this round's merged with earlier rounds' when the step follows
    ``publish.merge``; never a test row) with the publish exporter, runs the recipe's command template, streams its
    output into the workspace log and ``.fea20k/logs/round-N-train.sft.log``, finds the checkpoint it wrote and
    records it in the ledger. Passes its input records through unchanged.

    Args / Config:
        command: argument list or string with placeholders {data} {images} {stats} {base_model} {output_dir}
            {round} {python} {workspace} {export_dir}; default ``python -m fea20k.train.sft ...``.
        shell: run ``command`` through ``/bin/sh -c`` (placeholders are shell-quoted); default false.
        format: export format, ``facial-r1`` (JSONL + images + config.json) or ``messages`` (chat JSONL).
        splits: source splits exported (``train``, optionally ``val``; ``test`` is not allowed).
        base_model: local path of the base model (used when there is no checkpoint to start from).
        start_from: ``previous_round`` (default: round N-1's last checkpoint, else base_model), ``base``, or an
            earlier train step of the round.
        output_dir: where the trainer writes (``checkpoints/round-{round}/{stage}`` under the workspace).
        min_rows, env, timeout.
    Input fields: the whole record (accepted, split, rationale, image, aus, emotion for the export).
    Output fields: the input records, unchanged.
    Drops: nothing. Counters ``train_rows``, ``not_exported_test``, ``not_exported_rejected``, ``train_seconds``.
    """

    Config = SFTConfig


@register_stage("train.grpo")
class TrainGRPO(_TrainStep):
    """GRPO with the filter's own checks as rewards, as a pipeline step (Facial-R1 stage 2).

    Same machinery as ``train.sft``; the default command is ``python -m fea20k.train.grpo`` (rewards from
    ``fea20k.rewards``) and the default ``start_from`` is ``train.sft``: the checkpoint the SFT step of the same round
    just registered. Passes its input records through unchanged.

    Args / Config: as ``train.sft``.
    Input fields: the whole record. Output fields: the input records, unchanged.
    Drops: nothing.
    """

    Config = GRPOConfig


# ---------------------------------------------------------------------------------------------- helpers


def export_training_data(rows: list[FaceRecord], export_dir: Path, fmt: str, name: str = "train",
                         contract: Any = None) -> dict[str, Path]:
    """Write ``rows`` in the layout of ``fea20k export`` (:func:`fea20k.publish.export.export_records`), plus, for
    ``facial-r1``, one combined file for single-file trainers. Returns the paths the placeholders point at.

    ``facial-r1``: {data} = ``<name>.jsonl`` (every row, its ``image`` relative to ``images/``), {images} =
    ``images/``, {stats} = ``config.json``. ``messages``: {data} = ``messages.jsonl``, {images} = the export folder
    (image paths start with ``images/``), {stats} = "" (no key). Rows without an aligned crop are left out and
    listed in ``missing_faces.txt``.
    """
    from fea20k.publish.export import export_records

    return export_records(rows, export_dir, fmt, combined=name if fmt == "facial-r1" else None,
                          contract=contract).files


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def render_command(template: str | list[str], values: dict[str, str | None], shell: bool, where: str) -> list[str]:
    """Fill the placeholders of a command template; a list with one string when ``shell`` is true."""
    parts = [template] if shell and isinstance(template, str) else (
        shlex.split(template) if isinstance(template, str) else list(template))
    if shell and not isinstance(template, str):
        parts = [" ".join(parts)]
    used = {f for part in parts for _, f, _, _ in string.Formatter().parse(part) if f}
    unknown = sorted(used - set(PLACEHOLDERS))
    if unknown:
        raise ConfigError(f"{where}: command uses unknown placeholder(s) {unknown}; available: {list(PLACEHOLDERS)}")
    if "base_model" in used and not values.get("base_model"):
        raise ConfigError(f"{where}: the command needs {{base_model}} but there is none: set base_model = "
                          "'/path/to/local/model' (a local directory; nothing is downloaded)")
    filled = {k: ("" if v is None else str(v)) for k, v in values.items()}
    if shell:
        filled = {k: shlex.quote(v) for k, v in filled.items()}
    try:
        return [p.format_map(_Strict(filled)) for p in parts]
    except (KeyError, ValueError, IndexError) as e:
        raise ConfigError(f"{where}: cannot fill the command template ({e}); placeholders are {{name}}, "
                          "literal braces are written {{{{ and }}}}") from None


def _show(argv: list[str]) -> str:
    return argv[0] if len(argv) == 1 else shlex.join(argv)


def run_trainer(argv: list[str], log_file: Path, label: str, cwd: Path, env: dict[str, str] | None = None,
                timeout: float | None = None, shell: bool = False) -> None:
    """Run a trainer command, streaming each output line to the logger and to ``log_file``; raise on failure."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    shown = _show(argv)
    logger.info("%s: running %s (output: %s)", label, shown, log_file)
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    timed_out = threading.Event()
    with log_file.open("w", encoding="utf-8") as log:
        log.write(f"$ {shown}\n")
        try:
            proc = subprocess.Popen(argv[0] if shell else argv, shell=shell, cwd=cwd, env=full_env,  # noqa: S602
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    errors="replace")
        except OSError as e:
            raise TrainerFailedError(f"{label}: cannot start the trainer command {shown}: {e}; check `command` "
                                     "in the recipe") from None

        def _kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, _kill) if timeout else None
        if timer is not None:
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                log.write(line + "\n")
                log.flush()
                tail.append(line)
                logger.info("[%s] %s", label, line)
            code = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if timed_out.is_set():
        raise TrainerFailedError(f"{label}: trainer timed out after {timeout:g}s: {shown}; output in {log_file}")
    if code != 0:
        last = next((ln for ln in reversed(tail) if ln.strip()), "")
        raise TrainerFailedError(f"{label}: trainer command failed with exit code {code} (last output line: "
                                 f"{last!r}); full output in {log_file}; command: {shown}")


def _is_checkpoint(d: Path) -> bool:
    return d.is_dir() and (any((d / m).is_file() for m in CHECKPOINT_MARKERS) or any(d.glob("*.safetensors")))


def _step_number(p: Path) -> int:
    tail = p.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def find_checkpoint(out_dir: Path) -> Path | None:
    """``out_dir`` itself when it holds a model, else its newest ``checkpoint-*`` (highest step, then mtime)."""
    if _is_checkpoint(out_dir):
        return out_dir.resolve()
    cands = [p for p in out_dir.glob("checkpoint-*") if _is_checkpoint(p)]
    if not cands:
        return None
    return max(cands, key=lambda p: (_step_number(p), p.stat().st_mtime)).resolve()


def _clear_output_dir(out_dir: Path, ws_root: Path) -> None:
    """Remove what an earlier attempt left in the output folder (only inside the workspace), so the checkpoint
    found afterwards is this run's."""
    import shutil

    try:
        rel = out_dir.resolve().relative_to(ws_root.resolve())
    except ValueError:
        if out_dir.is_dir() and any(out_dir.iterdir()):
            logger.warning("%s is outside the workspace and not empty; the newest checkpoint in it will be used",
                           out_dir)
        return
    if rel.parts and out_dir.is_dir():
        shutil.rmtree(out_dir)
