"""``annotate.draft``: the teacher (or the offline ``rules`` annotator) drafts a rationale per record."""

from __future__ import annotations

from fea20k.annotate.runner import AnnotateConfig, AnnotateStage
from fea20k.annotate.task import DraftTask
from fea20k.stage import register_stage


class DraftConfig(AnnotateConfig):
    """``[stages."annotate.draft"]``: which annotator, whether the ground truth is shown, repair settings."""

    annotator: str = "rules"


@register_stage("annotate.draft")
class Draft(AnnotateStage):
    """Draft an AU-grounded rationale for every live record.

    Args:
        annotator: name of ``annotators/<name>.toml`` (default ``rules``: offline, from the ground truth;
            ``teacher``: GPT-4o-mini or any OpenAI-compatible endpoint).
        gold_in_prompt: show the ground-truth AUs/emotion in the prompt (stamped on every rationale).
        max_attempts: override the annotator's repair attempts. validators: rule set of the repair loop.
        repair: re-ask with the failed checks as feedback. budget_usd, concurrency: overrides, not in the signature.

    Input fields: id, source, meta["corpus"], face (aligned crop) or image, emotion, aus, au_coded.

    Output fields: rationale (text, annotator, backend, model, prompt_hash, gold_in_prompt, attempts, tokens,
        cost, raw of every attempt, errors), provenance["annotate.draft"].

    Drops: ``annotation_failed`` (every attempt failed; raw replies and reasons kept in the rationale). A record
        whose call failed for transport reasons after its retries is no drop: it is pending, its chunk is not
        written, and the build exits 4 (:class:`~fea20k.errors.PendingError`) so the next one retries it.

    Example:
        ``[stages."annotate.draft"]`` ``annotator = "teacher"``
    """

    Config = DraftConfig
    task_cls = DraftTask
