"""Annotator definitions: ``annotators/<name>.toml`` validated into :class:`AnnotatorSpec`.

An annotator names a backend (``rules``, ``openai``, ``vllm``, ``transformers``), the model and its sampling
parameters, transport limits (concurrency, requests/tokens per minute, timeout, retries, the ``circuit_breaker``),
the repair budget (``max_attempts``), prices and a spending cap, and the prompt template and data files it reads
(paths relative to ``annotators/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from fea20k.config import StrictModel, read_toml, validate_model
from fea20k.errors import ConfigError
from fea20k.redact import watch_env


# TOML files of annotators/ that are data the annotators read, not annotators
DATA_FILES = frozenset({"emotion_sets", "feedback"})
# the keys of an annotator's [transformers] table, and its dtypes
TRANSFORMERS_KEYS = ("device", "dtype")
TRANSFORMERS_DTYPES = ("auto", "float32", "bfloat16", "float16")


class AnnotatorSpec(StrictModel):
    """One annotator definition (the whole ``annotators/<name>.toml``)."""

    # Keys that change how fast or how expensively replies arrive, never what they say: kept out of signatures.
    TRANSPORT_KEYS: ClassVar[frozenset[str]] = frozenset({
        "base_url", "api_key_env", "concurrency", "rpm", "tpm", "timeout", "max_retries", "backoff_base",
        "backoff_max", "price_in", "price_out", "budget_usd", "description", "http_client", "processes",
        "circuit_breaker", "mode", "batch_discount",
    })

    name: str = ""
    description: str = ""
    backend: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None  # the NAME of the environment variable holding the key, never the key
    checkpoint: str | None = None  # vllm, transformers: local checkpoint directory
    prompt: str = "prompts/facial_r1.md.j2"
    question: str = "What is the emotion of this face?"
    emotion_sets: str = "emotion_sets.toml"
    feedback: str = "feedback.toml"  # how failed checks are explained in a repair prompt
    phrases: str | None = None  # rules: phrase templates
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    concurrency: int = Field(16, ge=1, le=4096)  # requests in flight (all client processes together)
    # openai: client processes the calls are split over (for endpoints faster than one process can feed, several
    # hundred requests/s); each gets an equal share of concurrency, rpm and tpm; the budget stays shared
    processes: int = Field(1, ge=1, le=64)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    timeout: float = Field(60.0, gt=0)
    http_client: Literal["auto", "httpx", "aiohttp"] = "auto"  # openai backend transport (auto: aiohttp if installed)
    max_attempts: int = Field(3, ge=1, le=20)  # repair loop: attempts per record (failed checks -> feedback)
    max_retries: int = Field(6, ge=0, le=50)  # transport: retries per call on 429/5xx/timeouts/dropped connections
    backoff_base: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    # requests in a row that failed for transport reasons after their retries (the endpoint is plainly down): the
    # stage then sends nothing more and the rest of its records stay pending for the next build; 0: never stop
    circuit_breaker: int = Field(20, ge=0)
    price_in: float = Field(0.0, ge=0)  # USD per million input tokens
    price_out: float = Field(0.0, ge=0)  # USD per million output tokens
    budget_usd: float | None = Field(None, ge=0)
    # openai: "sync" sends each request as it is built; "batch" submits a round's requests as one Batch API batch
    # (fea20k.annotate.batch), priced at price_in/price_out times batch_discount (the OpenAI Batch API's half price)
    mode: Literal["sync", "batch"] = "sync"
    batch_discount: float = Field(0.5, ge=0, le=1)
    feedback_max_chars: int = Field(1500, ge=0)  # the previous reply quoted in a repair prompt is cut to this
    vllm: dict[str, Any] = Field(default_factory=dict)  # extra vllm.LLM(...) engine arguments
    # backend 'transformers': device ("auto": a CUDA GPU when there is one, else "cpu"; or "cuda:1", ...) and dtype
    # ("auto": bfloat16 on a GPU that has it, else float32; or "float32", "bfloat16", "float16")
    transformers: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _backend_needs(self) -> AnnotatorSpec:
        if self.backend == "openai" and not self.model:
            raise ValueError("backend 'openai' needs `model`")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs `base_url` (e.g. https://api.openai.com/v1, or "
                             "http://127.0.0.1:8000/v1 for vllm serve)")
        if self.mode == "batch" and self.backend != "openai":
            raise ValueError(f"mode = \"batch\" needs backend 'openai' (the Batch API), not {self.backend!r}")
        if self.mode == "batch" and self.processes > 1:
            raise ValueError("mode = \"batch\" submits from the build process: set processes = 1")
        if self.backend == "rules" and not self.phrases:
            raise ValueError("backend 'rules' needs `phrases` (a phrase-template file under annotators/)")
        unknown = sorted(set(self.transformers) - set(TRANSFORMERS_KEYS))
        if unknown:
            raise ValueError(f"[transformers]: unknown key(s) {unknown}; allowed: {sorted(TRANSFORMERS_KEYS)}")
        dtype = self.transformers.get("dtype", "auto")
        if dtype not in TRANSFORMERS_DTYPES:
            raise ValueError(f"[transformers] dtype = {dtype!r}; allowed: {list(TRANSFORMERS_DTYPES)}")
        if not isinstance(self.transformers.get("device", "auto"), str):
            raise ValueError("[transformers] device must be a string (\"auto\", \"cpu\", \"cuda\", \"cuda:1\", ...)")
        return self

    def sampling(self) -> dict[str, Any]:
        """Sampling parameters sent with every request (and hashed into the request key)."""
        params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.top_p is not None:
            params["top_p"] = self.top_p
        if self.seed is not None:
            params["seed"] = self.seed
        return params

    def signature_dump(self) -> dict[str, Any]:
        """What of this definition changes the replies (transport, prices and budget left out)."""
        out = self.model_dump(mode="json", exclude=set(self.TRANSPORT_KEYS))
        if not out.get("transformers"):  # a later key: left out when unset, so older annotators keep their signature
            out.pop("transformers", None)
        return out


def load_annotator(annotators_dir: Path, name: str) -> tuple[AnnotatorSpec, Path]:
    """Read and validate ``annotators_dir/<name>.toml``; returns the spec and the file's path."""
    path = Path(annotators_dir) / f"{name}.toml"
    if not path.is_file():
        available = sorted(p.stem for p in Path(annotators_dir).glob("*.toml") if p.stem not in DATA_FILES)
        raise ConfigError(f"{path}: annotator {name!r} not found; available: {available}")
    data = read_toml(path)
    spec = validate_model(AnnotatorSpec, data, str(path))
    if not spec.name:
        spec.name = name
    watch_env(spec.api_key_env)  # its key is masked in every error text stored or logged from now on
    return spec, path


def annotator_file(annotators_dir: Path, rel: str, spec_path: Path) -> Path:
    """A file an annotator refers to (template, phrases), relative to ``annotators/``; missing is a ConfigError."""
    p = Path(annotators_dir) / rel
    if not p.is_file():
        raise ConfigError(f"{spec_path}: refers to {rel!r}, but {p} does not exist")
    return p
