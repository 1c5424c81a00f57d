"""Canonical emotion and AU vocabularies, loaded from ``validators/vocab.toml`` and ``validators/prototypes.toml``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import tomllib

from fea20k.errors import ConfigError
from fea20k.resources import data_path


@dataclass(frozen=True)
class Vocab:
    """The closed emotion set, the emotion synonym map, AU names and emotion prototypes."""

    emotions: tuple[str, ...]
    synonyms: dict[str, str]
    au_names: dict[int, str]
    prototypes: dict[str, tuple[frozenset[int], frozenset[int]]]  # emotion -> (core AUs, optional AUs)

    def emotion_index(self, name: str) -> int:
        """ClassLabel index of a canonical emotion name."""
        return self.emotions.index(name)


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e


@lru_cache(maxsize=8)
def load_vocab(validators_dir: Path | None = None) -> Vocab:
    """Load the vocabularies from a validators folder (default: the shipped one)."""
    base = Path(validators_dir) if validators_dir else data_path("validators")
    raw = _read_toml(base / "vocab.toml")
    protos_raw = _read_toml(base / "prototypes.toml")
    emotions = tuple(raw["emotions"])
    synonyms = {str(k): str(v) for k, v in raw.get("emotion_synonyms", {}).items()}
    for k, v in synonyms.items():
        if v not in emotions:
            raise ConfigError(f"{base / 'vocab.toml'}: [emotion_synonyms] {k} = {v!r} is not one of {list(emotions)}")
    au_names = {int(k): str(v) for k, v in raw["aus"].items()}
    prototypes: dict[str, tuple[frozenset[int], frozenset[int]]] = {}
    for emo, spec in protos_raw.items():
        if emo not in emotions:
            raise ConfigError(f"{base / 'prototypes.toml'}: [{emo}] is not a canonical emotion {list(emotions)}")
        unknown = set(spec) - {"core", "optional"}
        if unknown:
            raise ConfigError(f"{base / 'prototypes.toml'}: [{emo}] unknown key(s) {sorted(unknown)}")
        prototypes[emo] = (frozenset(spec.get("core", ())), frozenset(spec.get("optional", ())))
    return Vocab(emotions=emotions, synonyms=synonyms, au_names=au_names, prototypes=prototypes)


