"""``annotate.regenerate``: the trained model (round k-1 checkpoint) regenerates rationales in rounds >= 1."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fea20k.annotate.runner import AnnotateConfig, AnnotateStage
from fea20k.annotate.task import RegenerateTask
from fea20k.prompt import CONTRACT_FILE, read_contract_file
from fea20k.stage import register_stage


logger = logging.getLogger(__name__)

class RegenerateConfig(AnnotateConfig):
    """``[stages."annotate.regenerate"]``: the trained-model annotator and its repair settings."""

    annotator: str = "facial-r1"


@register_stage("annotate.regenerate")
class Regenerate(AnnotateStage):
    """Regenerate rationales with the trained model, ground truth shown, retrying with the failed checks.

    Args:
        annotator: ``facial-r1`` (``vllm serve`` behind the openai backend), ``facial-r1-vllm`` (in-process vLLM,
            GPU) or ``facial-r1-local`` (in-process transformers, CPU or GPU); the in-process ones default to the
            checkpoint the previous round's train step registered.
        gold_in_prompt, max_attempts, validators, repair, budget_usd, concurrency: as in ``annotate.draft``.

    Input fields: as ``annotate.draft``.

    Output fields: rationale and provenance["annotate.regenerate"], as ``annotate.draft``.

    Drops: ``annotation_failed``; transport failures leave records pending, as in ``annotate.draft``.

    Example:
        ``[stages."annotate.regenerate"]`` ``annotator = "facial-r1"``
    """

    Config = RegenerateConfig
    task_cls = RegenerateTask

    def request_identity(self) -> str | None:
        """The round N-1 checkpoint (path and train signature), also behind ``vllm serve``: the openai backend only
        sees the served name (``facial-r1``), so without it a sample re-asked in round N would get round N-1's
        model's cached answer. An in-process backend names its own checkpoint folder; when that is the registered
        one, its train signature is added too, so a retrain into the same folder is a new model, not a cache hit."""
        own = self.backend.identity
        registered = self.previous_checkpoint()
        if own is None or (registered is not None and Path(own).resolve() == Path(registered).resolve()):
            return self.previous_checkpoint_identity()
        return own

    def signature_extra(self) -> dict[str, Any]:
        """Also the round N-1 checkpoint: when round N-1 is retrained, round N regenerates (train area)."""
        return {**super().signature_extra(), "checkpoint": self.previous_checkpoint()}

    def load(self) -> None:
        first = not getattr(self, "_loaded", False)
        super().load()
        if first and not self.backend.offline and getattr(self, "_client", None) is None:
            self.check_prompt_contract()

    def check_prompt_contract(self) -> str | None:
        """Say in one line when the checkpoint was trained on prompts of another contract than this annotator's
        (its ``prompt_contract.json``, written by the trainers): the model would be asked with text it never saw.
        Returns the line (None when they agree or the checkpoint records none)."""
        ckpt = self.backend.identity or self.previous_checkpoint()
        if not ckpt or not Path(ckpt).is_dir():
            return None
        trained = read_contract_file(Path(ckpt))
        if not trained or trained.get("id") == self.task.contract.id:
            return None
        line = (f"{self.name} (round {self.ctx.round}): checkpoint {ckpt} was trained on prompt contract "
                f"{trained.get('id')} but annotator {self.spec.name!r} asks with {self.task.contract.id} (its "
                f"{CONTRACT_FILE}); retrain on an export rendered with this annotator, or restore its template")
        logger.warning("%s", line)
        self.stats.add("prompt_contract_mismatch")
        return line
