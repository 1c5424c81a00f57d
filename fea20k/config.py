"""Validated configuration models: the workspace file ``fea20k.toml`` and the recipe ``pipelines/*.toml``.

Every model rejects unknown keys; a failure names the file, the key and the fix (docs/style.md P5). Values are strict:
a boolean is ``true``/``false``, a number is a number, a string is a string (``include_images = "no"`` is an error,
not false); see :func:`validate_model`.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, TypeVar

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fea20k.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every configuration model: unknown keys are errors, values are validated on assignment, and data read
    from a file is validated strictly (:func:`validate_model`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


M = TypeVar("M", bound=BaseModel)


def format_validation_error(where: str, err: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``file: [section] key: message``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key '{loc}'; remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"{where}: missing required key '{loc}'")
        else:
            lines.append(f"{where}: '{loc}' {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def validate_model(model: type[M], data: Any, where: str, prefix: str = "") -> M:
    """Validate ``data`` into ``model`` or raise :class:`ConfigError` naming ``where`` and the key."""
    try:
        return strict_validate(model, data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(where, e, prefix)) from None


def strict_validate(model: type[M], data: Any) -> M:
    """Validate ``data`` (TOML values, or a model's JSON dump) into ``model`` with no lax coercion.

    Validated as JSON in pydantic's strict mode: no ``"no"`` -> False, ``1`` -> True or ``"3"`` -> 3, while what a
    file can only spell as a string or an array still validates (a path, a tuple, an integer table key). Data that is
    not JSON-like (objects built in code, not read from a file) is validated as before, in Python mode.
    """
    try:
        text = json.dumps(data, default=_json_value, allow_nan=True)
    except (TypeError, ValueError):
        return model.model_validate(data)
    return model.model_validate_json(text, strict=True)


def _json_value(value: Any) -> Any:
    """JSON for the non-JSON values of a TOML file or a config dump (dates, paths, sets); anything else is code's."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"not JSON: {type(value).__name__}")


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a one-line :class:`ConfigError`."""
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def load_toml_model(path: Path, model: type[M]) -> M:
    """Read and validate a TOML file into ``model``."""
    return validate_model(model, read_toml(path), str(path))


# ---------------------------------------------------------------------------------------------- fea20k.toml


class WorkspaceSection(StrictModel):
    name: str = "fea20k"
    recipe: str = "pipelines/default.toml"


class SourceConfig(StrictModel):
    """One source corpus: the adapter that reads its release layout, its root, and adapter options."""

    adapter: str
    root: Path
    options: dict[str, Any] = Field(default_factory=dict)
    synthetic: bool = False  # generated data (the demo): no licence restricts publishing its faces


class PublishSection(StrictModel):
    repo: str | None = None
    private: bool = True
    include_images: bool = False
    shard_max_mb: int = Field(256, ge=1)


class WorkspaceConfig(StrictModel):
    """The whole ``fea20k.toml``."""

    workspace: WorkspaceSection = Field(default_factory=WorkspaceSection)
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    publish: PublishSection = Field(default_factory=PublishSection)

    @field_validator("sources")
    @classmethod
    def _source_names(cls, v: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in v:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"source name {name!r} must be letters, digits, '-' or '_' (it starts every id)")
        return v


# ---------------------------------------------------------------------------------------------- recipes


class RoundPlan(StrictModel):
    """The steps of a round, in order. ``ingest`` expands to one ingest stage per configured source."""

    steps: list[str]


class Recipe(StrictModel):
    """A pipeline recipe (``pipelines/*.toml``): rounds and per-stage configuration."""

    name: str
    description: str = ""
    chunk_size: int = Field(1000, ge=1, le=1_000_000)
    rounds: dict[str, RoundPlan]
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # no silent loss (fea20k.guards): after ingest and faces.align, a source that kept nothing or lost more than this
    # share of its records to one reason stops the build; [allow_exclusion_share] raises it per source name
    max_exclusion_share: float = Field(0.5, gt=0.0, le=1.0)
    allow_exclusion_share: dict[str, float] = Field(default_factory=dict)

    @field_validator("allow_exclusion_share")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        for src, share in v.items():
            if not 0.0 < share <= 1.0:
                raise ValueError(f"{src} = {share}: a share is a number in (0, 1]; 1.0 lets every exclusion through")
        return v

    @field_validator("rounds")
    @classmethod
    def _round_keys(cls, v: dict[str, RoundPlan]) -> dict[str, RoundPlan]:
        for key in v:
            if key != "default" and not key.isdigit():
                raise ValueError(f"round key {key!r} must be a round number or 'default'")
        if "0" not in v:
            raise ValueError("the recipe must define [rounds.0]")
        return v

    def plan(self, round_: int) -> RoundPlan:
        """The steps of round ``round_`` (an explicit ``[rounds.N]`` or ``[rounds.default]``)."""
        plan = self.rounds.get(str(round_)) or (self.rounds.get("default") if round_ > 0 else None)
        if plan is None:
            raise ConfigError(f"recipe {self.name!r} defines no [rounds.{round_}] and no [rounds.default]")
        return plan
