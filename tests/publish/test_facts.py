"""The release facts are counted column-wise: they must be what the per-record definitions give."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from fea20k.publish.facts import NO_EMOTION, ReleaseFacts, _evaluated_mask
from fea20k.publish.notes import digest
from fea20k.schema import to_arrow

from .conftest import make_records


def evaluated(accepted: bool | None, excluded_at: str | None) -> bool:
    """The per-row definition: the automatic checks judged a row (accepted, or excluded by an annotate, validate or
    review step)."""
    if accepted:
        return True
    if accepted is False and excluded_at:
        return excluded_at.split(".", 1)[0] in ("annotate", "validate", "review")
    return False


def test_evaluated_mask_is_evaluated() -> None:
    cases = [(a, x) for a in (True, False, None) for x in (None, "", "validate", "validate.au", "annotate",
                                                          "review", "reviewer", "faces.align", "publish")]
    mask = _evaluated_mask(pa.array([a for a, _ in cases], pa.bool_()), pa.array([x for _, x in cases], pa.string()))
    assert mask.to_pylist() == [evaluated(a, x) for a, x in cases]


def test_column_wise_facts_match_the_records() -> None:
    recs = make_records()
    recs[0].rationale = None
    recs[1].emotion = None
    recs[2].accepted = None
    table = to_arrow(recs)
    facts = ReleaseFacts()
    facts.add_pool(0, table)
    released = [r for r in recs if r.accepted]
    facts.add_released("train", table.filter(pa.array([r.accepted is True for r in recs])))
    facts.add_rejected(table.filter(pa.array([not r.accepted for r in recs])))

    judged = [r for r in recs if evaluated(r.accepted, r.excluded_at)]
    acc = facts.rounds[0]
    assert acc.evaluated == len(judged) and acc.accepted == sum(1 for r in judged if r.accepted)
    assert acc.by_class == Counter(r.emotion or NO_EMOTION for r in judged)
    assert acc.reasons == Counter(x for r in judged if not r.accepted for x in r.reasons)
    assert facts.counts == Counter((r.source, "train", r.emotion or NO_EMOTION) for r in released)
    assert facts.au_present["train"] == Counter(a for r in released for a in r.present_aus())
    assert facts.au_coded["train"] == Counter(a for r in released for a in r.au_coded)
    rats = [r.rationale for r in released if r.rationale is not None]
    assert facts.annotators == Counter((x.annotator, x.backend, x.model or "") for x in rats)
    assert facts.gold_in_prompt == Counter(x.gold_in_prompt for x in rats)
    assert facts.attempts == Counter(x.attempts for x in rats)
    assert facts.rejected_reasons == Counter((r.source, x) for r in recs if not r.accepted
                                             for x in r.reasons or ["(no reason)"])
    assert facts.released_ids() == [r.id for r in released]
    assert facts.row_digests() == {r.id: digest("train", r.emotion, r.present_aus(),
                                                r.rationale.text if r.rationale else None) for r in released}
