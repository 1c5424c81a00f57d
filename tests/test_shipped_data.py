"""Every shipped curator file loads and validates: recipes (with each stage table), vocabularies."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.config import Recipe, load_toml_model, read_toml
from fea20k.resources import data_path
from fea20k.stage import get_stage_class
from fea20k.vocab import load_vocab


RECIPES = sorted(data_path("pipelines").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_and_its_stage_tables_validate(path: Path) -> None:
    recipe = load_toml_model(path, Recipe)
    for name, table in recipe.stages.items():
        cls = get_stage_class(name)
        cls.Config.model_validate(table)
    for plan in recipe.rounds.values():
        for step in plan.steps:
            if step != "ingest":
                get_stage_class(step)


def test_vocab_matches_the_canonical_sets() -> None:
    v = load_vocab()
    assert v.emotions == ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
    assert v.synonyms["angry"] == "anger" and v.synonyms["joy"] == "happiness"
    assert v.au_names[12] == "Lip corner puller" and v.au_names[43] == "Eyes closed"
    assert set(v.prototypes) == set(v.emotions)
    assert v.prototypes["happiness"][0] == {6, 12}


def test_vocab_rejects_unknown_synonym_target(tmp_path: Path) -> None:
    from fea20k.errors import ConfigError

    text = data_path("validators", "vocab.toml").read_text().replace('mad = "anger"', 'mad = "rage"')
    (tmp_path / "vocab.toml").write_text(text)
    (tmp_path / "prototypes.toml").write_text(data_path("validators", "prototypes.toml").read_text())
    with pytest.raises(ConfigError, match=r"vocab.toml: \[emotion_synonyms\] mad = 'rage'"):
        load_vocab(tmp_path)


def test_toml_files_parse() -> None:
    for folder in ("pipelines", "annotators", "validators", "cards"):
        for p in data_path(folder).rglob("*.toml"):
            read_toml(p)
