"""``fea20k eval --annotator NAME --release DIR``: a model answers a release's split, then the benchmark table.

The samples of the split are read from the release (labels, AUs coded, corpus, question), their faces from the
release when it embeds them, else from the workspace's stage outputs of the release's round (an annotations-only
release). Each sample is asked ONCE, without the ground-truth block, with the annotator's prompt contract
(:mod:`fea20k.prompt`: the text the model was trained on), through the annotator's backend (``openai``, ``vllm``,
``transformers``) and the workspace's request cache, so a re-run costs nothing and answers the same. The replies are
written as a predictions JSONL (``{id, prediction}``), which :func:`fea20k.metrics.evaluate_file` scores exactly as
``fea20k eval PREDICTIONS.jsonl --release DIR`` does; the result records the protocol beside the numbers (AU set
and class set per source, parser, denominators, model, checkpoint, prompt contract).

A request that got no reply (endpoint down, retries exhausted) is not a prediction: it is listed, left out of the
file, and the run reports it so the caller exits non-zero; a re-run asks only those (the rest come from the cache).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fea20k.annotate.regenerate import Regenerate, RegenerateConfig
from fea20k.errors import ConfigError, Fea20kUserError, PendingError
from fea20k.record import FaceRecord
from fea20k.stage import StageContext
from fea20k.workspace import Workspace


logger = logging.getLogger(__name__)

CHUNK = 256  # samples asked per stage call (bounded memory; the cache is written as replies arrive)


class EvalConfig(RegenerateConfig):
    """The annotate-stage settings eval runs with: one attempt, no ground truth, no repair."""

    gold_in_prompt: bool = False
    repair: bool = False
    max_attempts: int | None = 1


class EvalAsk(Regenerate):
    """The regenerate machinery (task, backends, request cache, budget) asking each sample once for eval. Not a
    pipeline stage: it is not registered."""

    name: ClassVar[str] = "eval"
    Config = EvalConfig

    def __init__(self, config: dict[str, Any], ctx: StageContext, checkpoint: str | None) -> None:
        super().__init__(config, ctx, where="fea20k eval")
        self._checkpoint = checkpoint

    def previous_checkpoint(self) -> str | None:
        return self._checkpoint

    def previous_checkpoint_identity(self) -> str | None:
        return self._checkpoint


@dataclass
class EvalRun:
    """What :func:`run_eval` produced."""

    result: dict[str, Any]
    predictions: Path
    result_file: Path
    asked: int = 0
    failed: list[str] = field(default_factory=list)  # ids whose request got no reply (transport)
    no_face: list[str] = field(default_factory=list)


def _release_round(release: Path) -> int | None:
    from fea20k.publish.local import release_manifest

    manifest = release_manifest(release) or {}
    r = manifest.get("round")
    return int(r) if r is not None else None


def release_records(release: Path, split: str) -> tuple[list[FaceRecord], bool]:
    """The samples of ``split`` as records (faces included when the release embeds them) and whether it does."""
    import pyarrow.parquet as pq

    from fea20k.metrics import _class_names
    from fea20k.vocab import load_vocab

    files = sorted(Path(release).glob(f"data/{split}-*.parquet"))
    if not files:
        raise Fea20kUserError(f"{release}: no data/{split}-*.parquet; pass a release folder that `fea20k build` "
                              "published (e.g. <workspace>/releases/round-0) and a split it has")
    out: list[FaceRecord] = []
    with_images = False
    for fp in files:
        pf = pq.ParquetFile(fp)
        names = _class_names(pf.schema_arrow.metadata) or list(load_vocab().emotions)
        with_images = "image" in pf.schema_arrow.names
        for row in pf.read().to_pylist():
            coded = [int(a) for a in row.get("au_coded") or []]
            present = {int(a) for a in row.get("aus") or []}
            unknown = {int(a) for a in row.get("aus_unknown") or []}
            aus: dict[int, int | None] = {a: (1 if a in present else 0) for a in coded}
            aus.update(dict.fromkeys(present, 1))
            aus.update(dict.fromkeys(unknown))
            meta = json.loads(row["meta"]) if row.get("meta") else {}
            if row.get("corpus"):
                meta.setdefault("corpus", row["corpus"])
            emo = row.get("emotion")
            image = row.get("image") or {}
            out.append(FaceRecord(id=str(row["id"]), source=str(row["source"]), split=row.get("split"),
                                  subject=row.get("subject"), emotion=names[emo] if emo is not None else None,
                                  aus=aus, au_coded=coded, meta=meta, face=image.get("bytes") or None))
    return out, with_images


def _faces_from_workspace(ws: Workspace, round_: int | None, records: list[FaceRecord]) -> None:
    """Fill in the faces of an annotations-only release from the stage outputs of its round."""
    from fea20k.io import StageOutput
    from fea20k.publish.local import upstream_dir

    wanted = {r.id: r for r in records if r.face is None}
    if not wanted or round_ is None:
        return
    d = upstream_dir(ws, round_)
    if not (d / "_SUCCESS.json").is_file():
        return
    for rec in StageOutput([d]).iter_records():
        target = wanted.get(rec.id)
        if target is not None and rec.face:
            target.face = rec.face


def default_checkpoint(ws: Workspace, round_: int | None) -> str | None:
    """The checkpoint the release's round registered, else the newest registered one."""
    if round_ is not None:
        ckpt = ws.ledger.checkpoint(round_)
        if ckpt:
            return ckpt
    row = ws.ledger.conn.execute("SELECT path FROM checkpoints ORDER BY created DESC LIMIT 1").fetchone()
    return row[0] if row else None


def run_eval(ws: Workspace, annotator: str, release: Path, split: str = "test", *, checkpoint: str | None = None,
             out_dir: Path | None = None, limit: int | None = None) -> EvalRun:
    """Ask ``annotator`` every sample of the release's ``split``; write the predictions and the scored result."""
    from fea20k.metrics import evaluate_file

    release = Path(release)
    round_ = _release_round(release)
    records, with_images = release_records(release, split)
    if limit is not None:
        records = records[:limit]
    if not with_images:
        _faces_from_workspace(ws, round_, records)
    ckpt = checkpoint or default_checkpoint(ws, round_)
    ctx = StageContext(workspace_root=ws.root, round=round_ if round_ is not None else 0, stage_key="eval")
    stage = EvalAsk({"annotator": annotator}, ctx, ckpt)
    if stage.backend.offline:
        raise ConfigError(f"annotator {annotator!r} (backend {stage.backend.name!r}) writes from the ground truth; "
                          "evaluate a model: name an annotator with a model backend (openai, vllm, transformers)")
    out_dir = Path(out_dir) if out_dir is not None else ws.root / "evals"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{annotator}-{release.name}-{split}"
    pred_path = out_dir / f"{stem}.predictions.jsonl"
    run = EvalRun(result={}, predictions=pred_path, result_file=out_dir / f"{stem}.json")
    tmp = pred_path.with_name(pred_path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for start in range(0, len(records), CHUNK):
                batch = records[start:start + CHUNK]
                for rec in batch:
                    if rec.face is None and stage.backend.needs_image:
                        run.no_face.append(rec.id)
                live = [r for r in batch if not (r.face is None and stage.backend.needs_image)]
                try:
                    stage.run_batch(live)
                except PendingError as e:  # eval has no chunk to redo: a sample that got no reply is a failed id
                    logger.warning("eval: %s", e.message().split("; re-run", 1)[0])
                for rec in live:
                    rat = rec.rationale
                    answered = bool(rat and rat.raw) and not _refused(rat.errors)
                    if not answered:
                        run.failed.append(rec.id)
                        continue
                    run.asked += 1
                    f.write(json.dumps({"id": rec.id, "prediction": rat.raw[-1]}, ensure_ascii=False) + "\n")
        tmp.replace(pred_path)
    finally:
        stage.close()
        tmp.unlink(missing_ok=True)
    result = evaluate_file(pred_path, release, split=split)
    result["protocol"] = protocol(stage, result, release, split, ckpt, with_images)
    result["failed_ids"] = run.failed
    result["no_face_ids"] = run.no_face
    run.result = result
    run.result_file.write_text(json.dumps(result, indent=1, sort_keys=True, default=str), encoding="utf-8")
    if run.no_face:
        logger.warning("%d sample(s) have no face in the release nor in the workspace and were not asked (first: "
                       "%s); `fea20k materialize` rebuilds faces of an annotations-only release", len(run.no_face),
                       run.no_face[0])
    return run


# how a backend's error starts when the request was refused (a non-retryable HTTP status; vllm: the engine refused
# the prompt): no answer, unlike an empty or malformed reply, which is a prediction. A transport failure leaves the
# record pending with no raw reply at all (fea20k.annotate.runner), which the caller sees as ``not rat.raw``.
NO_REPLY = ("http_", "engine_rejected")


def _refused(errors: list[str]) -> bool:
    return any(e.split(": ", 1)[-1].startswith(NO_REPLY) for e in errors)


def protocol(stage: EvalAsk, result: dict[str, Any], release: Path, split: str, checkpoint: str | None,
             with_images: bool) -> dict[str, Any]:
    """How the numbers were obtained, recorded beside them."""
    per_source = {}
    for src, block in result["sources"].items():
        au = block.get("au")
        emo = block.get("emotion")
        per_source[src] = {
            "au_set": sorted(int(a) for a in au["per_au"]) if au else None,
            "class_set": emo["confusion"]["rows"] if emo else None,
        }
    return {
        "release": str(release),
        "split": split,
        "annotator": stage.spec.name,
        "backend": stage.backend.name,
        "model": stage.backend.model,
        "checkpoint": checkpoint if stage.backend.name != "rules" else None,
        "prompt_contract": stage.task.contract.id,
        "ground_truth_in_prompt": False,
        "attempts": 1,
        "sampling": stage.spec.sampling(),
        "faces": "release" if with_images else "workspace",
        "parser": "fea20k.validate.parse (tolerant): AUs from the think block (the whole reply without one); "
                  "the first answer, normalised to the canonical vocabulary",
        "au_f1": "per source over the AUs its ground truth contains (au_set); macro = mean over AUs with at least "
                 "one positive, micro = pooled counts; predicted AUs outside the set are ignored",
        "accuracy": "correct / every sample with an emotion label (unparsed answers count as wrong)",
        "rouge_l": "rouge_score rougeL F-measure, stemmer on; reference = the release rationale, hypothesis = the "
                   "whole reply",
        "per_source": per_source,
    }
