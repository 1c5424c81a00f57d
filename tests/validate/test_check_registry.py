"""The check registry: order, feedback keys, registration rules, and a workspace's own check in a real round (the
one the README's "Adding a validation check" shows, run from the README's own code)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fea20k.config import StrictModel, read_toml
from fea20k.engine import build_round, round_status
from fea20k.errors import ConfigError
from fea20k.io import StageOutput
from fea20k.record import FaceRecord
from fea20k.resources import data_path
from fea20k.validate import checks
from fea20k.validate.checks import (
    CheckRule,
    RuleSet,
    check,
    check_text,
    default_ruleset,
    get_check,
    load_ruleset,
    registered_checks,
)
from fea20k.workspace import Workspace
from tests.validate.toy_round import make_round_ws


README = Path(__file__).resolve().parents[2] / "README.md"
PLUGIN_MODULE = "fea20k_plugins.validators.banned_words"


def readme_blocks() -> list[str]:
    """The python code blocks of the README's "Adding a validation check" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Adding a validation check\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


@pytest.fixture
def banned_words_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The README's check, as the text of a workspace plugin; registered only for this test."""
    monkeypatch.setattr(checks, "_CHECKS", dict(checks._CHECKS))
    yield readme_blocks()[0]
    sys.modules.pop(PLUGIN_MODULE, None)  # so another workspace's plugin of that name is imported afresh


def validated(ws: Path) -> dict[str, FaceRecord]:
    return {r.id: r for r in StageOutput([ws / ".fea20k/rounds/0/validate"]).iter_records()}


# ---------------------------------------------------------------------------------------------- the README's check


def test_a_workspace_check_rejects_with_its_reason(tmp_path: Path, banned_words_plugin: str) -> None:
    ws = make_round_ws(tmp_path, n_template=3)
    (ws / "validators" / "banned_words.py").write_text(banned_words_plugin)  # the check above
    rules = ws / "validators" / "default.toml"
    rules.write_text(rules.read_text() + '\n[banned_words]\nwords = ["inside"]\n')
    build_round(ws, 0)
    rec = validated(ws)["toy/0000"]  # "... brows raised inside (AU1), lowered (AU4) ..."
    assert rec.accepted is False and rec.reasons == ["banned_word"]


def test_the_readme_shows_the_test_that_runs(banned_words_plugin: str) -> None:
    blocks = readme_blocks()
    assert len(blocks) == 2
    assert blocks[1] in Path(__file__).read_text(encoding="utf-8")


def test_a_workspace_check_runs_after_the_built_in_ones_and_is_part_of_the_signature(
        tmp_path: Path, banned_words_plugin: str) -> None:
    ws = make_round_ws(tmp_path, n_template=3)
    plugin = ws / "validators" / "banned_words.py"
    plugin.write_text(banned_words_plugin)
    rules = ws / "validators" / "default.toml"
    rules.write_text(rules.read_text() + '\n[banned_words]\nwords = ["TIGHT"]\n')
    result = build_round(ws, 0)
    recs = validated(ws)
    # toy/0004: "brows lowered (AU4), lids tight (AU7)" answered "fear" for anger
    assert recs["toy/0004"].reasons == ["emotion_mismatch", "banned_word"]
    assert {s.key: s.stats for s in result.stages}["validate"].dropped["banned_word"] == 1
    assert [c.name for c in registered_checks()][-1] == "banned_words"
    assert get_check("banned_words").explains("banned_word")
    # the plugin's code feeds the validate stage's signature: editing it re-runs validate only
    assert build_round(ws, 0).ran == []
    plugin.write_text(banned_words_plugin + "\n")
    assert {s.key: s.status for s in round_status(Workspace(ws), 0)}["validate"] == "stale"


def test_load_ruleset_imports_the_workspace_checks_its_file_configures(tmp_path: Path,
                                                                      banned_words_plugin: str) -> None:
    ws = make_round_ws(tmp_path)
    rules = ws / "validators" / "default.toml"
    rules.write_text(rules.read_text() + '\n[banned_words]\nwords = ["dull"]\n')
    with pytest.raises(ConfigError, match=r"default.toml: unknown key 'banned_words'; remove it"):
        load_ruleset(rules)  # no such check (yet): an unknown section, as before
    (ws / "validators" / "banned_words.py").write_text(banned_words_plugin)
    loaded = load_ruleset(rules)  # e.g. `fea20k review`, which builds nothing, reads it so
    assert loaded.section("banned_words").words == ["dull"]
    rec = FaceRecord(id="r/1", source="rafdb", emotion="sadness", emotion_origin="gt")
    text = "<think>A dull face: inner brows raised (AU1), brows lowered (AU4), corners down (AU15).</think>" \
           "\n<answer>sadness</answer>"
    assert check_text(text, rec, loaded).reasons == ["banned_word"]
    rules.write_text(rules.read_text().replace('words = ["dull"]', 'words = ["dull"]\nmax_words = 3'))
    with pytest.raises(ConfigError, match=r"default.toml: \[banned_words\] unknown key 'max_words'"):
        load_ruleset(rules)


# ---------------------------------------------------------------------------------------------- the built-in checks


def test_built_in_checks_run_in_the_documented_order() -> None:
    names = [c.name for c in registered_checks()]
    assert names[:6] == ["format", "emotion", "aus", "hedging", "length", "consistency"]
    rules = default_ruleset()
    assert [name for name in rules.model_dump() if name != "template"][:6] == names[:6]


def test_every_built_in_feedback_key_has_a_sentence_for_the_repair_loop() -> None:
    messages = read_toml(data_path("annotators", "feedback.toml"))["messages"]
    for c in registered_checks()[:6]:
        missing = [key for key in c.feedback if key not in messages]
        assert not missing, f"check {c.name}: annotators/feedback.toml has no sentence for {missing}"


LONG = "The face shows a clear expression with several visible movements:"
TEXTS = [
    "", "<answer>sadness</answer>", "<think>x</think>", "Hi <think>x</think><answer>sadness</answer>",
    "<think>x</think> so <answer>sadness</answer>", "<think>x</think><answer>a</answer><answer>b</answer>",
    "<think>x</think><answer>Sad.</answer>", "<think>(AU04)</think><answer>sadness</answer>",
    "<think>x</think><answer></answer>", "<think>x</think><answer>bored</answer>",
    "<think>x</think><answer>anger</answer>", f"<think>{LONG} maybe (AU6) (AU12)</think><answer>sadness</answer>",
    f"<think>{' '.join(['w'] * 500)}</think><answer>sadness</answer>",
    "<think>(AU1) (AU2) (AU4)</think><answer>neutral</answer>", f"<think>{LONG}</think><answer>sadness</answer>",
]
RECORDS = [
    FaceRecord(id="r/1", source="rafdb", emotion="sadness", emotion_origin="gt"),
    FaceRecord(id="r/2", source="rafdb", emotion="neutral", emotion_origin="gt"),
    FaceRecord(id="d/1", source="disfa", aus={1: 0, 4: 1, 12: 0, 15: 1}, au_coded=[1, 4, 12, 15], aus_origin="gt"),
]


@pytest.mark.parametrize("mode", ["f1", "exact"])
def test_each_check_gives_only_reasons_its_feedback_keys_explain(mode: str) -> None:
    documented = {r.rstrip("_") for r in re.findall(r"``([a-z0-9_]+)(?:<min_f1>)?``", checks.__doc__ or "")}
    documented -= {"template_collapse"}
    seen: set[str] = set()
    for c in registered_checks()[:6]:
        rules = default_ruleset().model_copy(deep=True)
        rules.aus.mode = mode  # type: ignore[assignment]
        rules.aus.max_hallucinated = 0
        for other in registered_checks():
            rules.section(other.name).enabled = other.name == c.name
        for text in TEXTS:
            for rec in RECORDS:
                for reason in check_text(text, rec, rules).reasons:
                    assert c.explains(reason), f"check {c.name} gave {reason!r}, not among {c.feedback}"
                    seen.add(reason.rstrip("0123456789.").rstrip("_"))
    assert seen == documented - ({"au_f1_below"} if mode == "exact" else {"au_mismatch"})


# ---------------------------------------------------------------------------------------------- registration


class ToyRules(CheckRule):
    limit: int = 3


def test_registration_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "_CHECKS", dict(checks._CHECKS))

    def toy(p, rec, rule, vocab, res) -> None:  # noqa: ANN001
        res.reasons.append("toy")

    with pytest.raises(ConfigError, match="check name 'template' must be"):
        check("template", ToyRules, feedback="toy")
    with pytest.raises(ConfigError, match="check name 'section' must be"):
        check("section", ToyRules, feedback="toy")  # a RuleSet method: rules.section would be ambiguous

    class NoSwitch(StrictModel):
        limit: int = 3

    class NoDefault(CheckRule):
        limit: int

    with pytest.raises(ConfigError, match="'enabled' field"):
        check("toy", NoSwitch, feedback="toy")
    with pytest.raises(ConfigError, match="every key of NoDefault needs a default"):
        check("toy", NoDefault, feedback="toy")
    check("toy", ToyRules, feedback="toy")(toy)
    check("toy", ToyRules, feedback=("toy",))(toy)  # the same function again (a re-import): replaced in place
    assert [c.name for c in registered_checks()].count("toy") == 1

    def other(p, rec, rule, vocab, res) -> None:  # noqa: ANN001
        pass

    with pytest.raises(ConfigError, match="check 'toy' registered twice"):
        check("toy", ToyRules, feedback="toy")(other)
    # a rule set built now has the section (defaults, or as given in code); an unknown section is an error
    assert RuleSet().section("toy") == ToyRules()
    assert RuleSet(toy={"limit": 5}).toy.limit == 5
    assert check_text(f"<think>{LONG} (AU4) (AU15)</think><answer>sadness</answer>", RECORDS[0],
                      RuleSet()).reasons == ["toy"]
    with pytest.raises(ValueError, match="unknown rule section"):
        RuleSet(nonsense={"enabled": True})
