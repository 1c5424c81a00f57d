"""fea20k.io.iter_jsonl: line numbers, blank and comment lines skipped, one-line errors of the caller's class."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.errors import Fea20kUserError
from fea20k.io import iter_jsonl


class _MyError(Exception):
    pass


def test_iter_jsonl_yields_line_numbers_and_skips_blank_and_comment_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"id": 1}\n\n  \n# a note\n[2, 3]\n', encoding="utf-8")
    assert list(iter_jsonl(p, comment="#")) == [(1, {"id": 1}), (5, [2, 3])]
    with pytest.raises(Fea20kUserError, match=r"a.jsonl:4: not valid JSON \(Expecting value\)$"):
        list(iter_jsonl(p))


def test_iter_jsonl_errors_use_the_given_class_and_hint(tmp_path: Path) -> None:
    p = tmp_path / "b.jsonl"
    p.write_text('{"id": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(_MyError, match=r"b.jsonl:2: not valid JSON \(.+\); fix it$"):
        list(iter_jsonl(p, _MyError, hint="fix it"))
    with pytest.raises(_MyError, match=r"missing.jsonl: file not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl", _MyError))
