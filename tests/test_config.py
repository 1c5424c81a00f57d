"""Every configuration file is validated strictly: a boolean is a boolean, a number a number, a string a string; each
error names its file and key. The shipped files and the demo workspace load under these rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.config import Recipe, SourceConfig, WorkspaceConfig, load_toml_model, validate_model
from fea20k.errors import ConfigError
from fea20k.resources import data_path
from fea20k.workspace import Workspace, init_workspace


def test_a_string_is_not_a_boolean(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    cfg = ws / "fea20k.toml"
    cfg.write_text(cfg.read_text().replace("include_images = false", 'include_images = "no"'))
    with pytest.raises(ConfigError) as exc:
        _ = Workspace(ws).config
    msg = str(exc.value)
    assert msg.startswith(f"{cfg}: 'publish.include_images'") and "valid boolean" in msg and "'no'" in msg


@pytest.mark.parametrize(("table", "bad"), [
    ("publish", "private = 1"),  # 1 is not true
    ("publish", 'shard_max_mb = "256"'),  # a quoted number is not a number
    ("publish", "shard_max_mb = 2.0"),  # nor is a float an integer
    ("workspace", "name = 3"),  # nor a number a string
])
def test_workspace_file_values_are_not_coerced(tmp_path: Path, table: str, bad: str) -> None:
    ws = init_workspace(tmp_path / "ws")
    cfg = ws / "fea20k.toml"
    key = bad.split(" = ")[0]
    text = "\n".join(line for line in cfg.read_text().splitlines() if not line.startswith(f"{key} ="))
    cfg.write_text(text.replace(f"[{table}]", f"[{table}]\n{bad}"))
    with pytest.raises(ConfigError, match=rf"^{cfg}: '{table}.{key}' "):
        _ = Workspace(ws).config


def test_what_a_file_can_only_spell_one_way_still_validates() -> None:
    """Paths are strings in TOML, numbers with no fraction are floats' integers, table keys are strings."""
    src = validate_model(SourceConfig, {"adapter": "rafdb_basic", "root": "corpora/raf"}, "fea20k.toml")
    assert src.root == Path("corpora/raf")
    recipe = validate_model(Recipe, {"name": "r", "rounds": {"0": {"steps": ["ingest"]}}, "max_exclusion_share": 1},
                            "r.toml")
    assert recipe.max_exclusion_share == 1.0
    from fea20k.annotate.backends.rules import Phrases
    from fea20k.config import read_toml

    phrases = validate_model(Phrases, read_toml(data_path("annotators", "rules", "phrases.toml")), "phrases.toml")
    assert all(isinstance(k, int) for k in phrases.movements)
    # objects built in code (not read from a file) validate as before
    assert WorkspaceConfig.model_validate({"publish": {"private": False}}).publish.private is False


def test_recipe_and_stage_tables_are_strict_and_name_the_recipe(tmp_path: Path) -> None:
    from fea20k.engine import plan_round

    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\nchunk_size = "50"\n[rounds.0]\nsteps = ["ingest"]\n')
    with pytest.raises(ConfigError, match=rf"^{recipe}: 'chunk_size' Input should be a valid integer"):
        load_toml_model(recipe, Recipe)
    from fea20k.demo import write_demo

    demo = tmp_path / "demo"
    write_demo(demo, n=20)
    recipe = demo / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text() + '\n[stages."annotate.draft"]\ngold_in_prompt = "false"\n')
    with pytest.raises(ConfigError, match=rf'^{recipe}: \[stages."annotate.draft"\]: \'gold_in_prompt\' Input should '
                                          r"be a valid boolean \(got 'false'\)"):
        plan_round(Workspace(demo), 0)


def test_validator_and_annotator_files_are_strict(tmp_path: Path) -> None:
    from fea20k.annotate.catalog import annotator_rows
    from fea20k.validate.checks import load_ruleset

    ws = init_workspace(tmp_path / "ws")
    rules = ws / "validators" / "default.toml"
    text = rules.read_text()
    assert "\nmin_f1 = " in text
    rules.write_text(text.replace("\nmin_f1 = ", '\nmin_f1 = "0.5" # was ', 1))
    with pytest.raises(ConfigError, match=rf"^{rules}: \[aus\] min_f1 = \"0.5\" "):
        load_ruleset(rules)
    teacher = ws / "annotators" / "teacher.toml"
    lines = teacher.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("concurrency ="))
    lines[i] = 'concurrency = "8"'
    teacher.write_text("\n".join(lines) + "\n")
    rows = {r.name: r for r in annotator_rows(ws / "annotators")}
    assert not rows["teacher"].ok
    assert rows["teacher"].error == "annotators/teacher.toml: 'concurrency' Input should be a valid integer (got '8')"
    assert all(r.ok for name, r in rows.items() if name != "teacher")


def test_shipped_files_and_the_demo_load_strictly(tmp_path: Path) -> None:
    from fea20k.annotate.catalog import annotator_rows
    from fea20k.demo import write_demo
    from fea20k.engine import plan_round
    from fea20k.publish.card import load_sources_file
    from fea20k.stage import get_stage_class
    from fea20k.validate.checks import load_ruleset

    for path in sorted(data_path("pipelines").glob("*.toml")):
        recipe = load_toml_model(path, Recipe)
        for name, table in recipe.stages.items():
            validate_model(get_stage_class(name).Config, table, f"{path}: [stages.\"{name}\"]")
    rows = annotator_rows(data_path("annotators"))
    assert rows and all(r.ok for r in rows), [r.error for r in rows if not r.ok]
    load_ruleset(data_path("validators", "default.toml"))
    load_sources_file(data_path("cards", "sources.toml"))
    demo = tmp_path / "demo"
    write_demo(demo, n=20)
    assert [ps.key for group in plan_round(Workspace(demo), 0) for ps in group][:3] == [
        "ingest/rafdb", "ingest/disfa", "faces.align"]
