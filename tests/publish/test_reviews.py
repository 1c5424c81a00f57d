"""reviews/round-N.jsonl parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.publish.reviews import Review, ReviewFileError, load_reviews

from .conftest import write_reviews


def test_load_reviews(tmp_path: Path) -> None:
    assert load_reviews(tmp_path, 0) == {}
    write_reviews(tmp_path, 2, ["# reviewer: A", "", {"id": "a/1", "decision": "reject", "note": "blur"},
                                {"id": "a/2", "decision": "accept"}, {"id": "a/1", "decision": "accept"}])
    assert load_reviews(tmp_path, 2) == {"a/1": Review("a/1", "accept"), "a/2": Review("a/2", "accept")}


@pytest.mark.parametrize(("line", "match"), [
    ("{not json", "not valid JSON"),
    ('{"id": "a/1", "decision": "maybe"}', "'decision' is 'maybe'"),
    ('{"id": "", "decision": "accept"}', "missing or empty 'id'"),
    ('{"id": "a/1", "decision": "accept", "who": "me"}', r"unknown key\(s\) \['who'\]"),
    ('["a/1", "accept"]', "expected a JSON object"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    p = write_reviews(tmp_path, 0, [{"id": "ok/1", "decision": "accept"}, line])
    with pytest.raises(ReviewFileError, match=match) as e:
        load_reviews(tmp_path, 0)
    assert str(e.value).startswith(f"{p}:2:")
