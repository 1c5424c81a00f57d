"""Pool selection: stratified, deterministic, test split only in round 0."""

from __future__ import annotations

from collections import Counter

from fea20k.select.pool import stratified_pick


def test_stratified_pick_balances_strata_and_is_deterministic() -> None:
    cands = [(f"a/{i}", "a|happiness") for i in range(100)] + [(f"a/s{i}", "a|sadness") for i in range(5)]
    cands += [(f"b/{i}", "b|-") for i in range(40)]
    picked = stratified_pick(cands, 30, seed=1)
    assert len(picked) == 30
    per = Counter(dict(cands)[p] for p in picked)
    assert per == {"a|sadness": 5, "a|happiness": 13, "b|-": 12} or per == {"a|sadness": 5, "a|happiness": 12,
                                                                            "b|-": 13}
    assert stratified_pick(cands, 30, seed=1) == picked
    assert stratified_pick(cands, 30, seed=2) != picked


def test_all_and_oversize_take_everything() -> None:
    cands = [(f"x/{i}", "s") for i in range(7)]
    assert stratified_pick(cands, "all", 0) == {c for c, _ in cands}
    assert stratified_pick(cands, 70, 0) == {c for c, _ in cands}
    assert stratified_pick([], 5, 0) == set()
