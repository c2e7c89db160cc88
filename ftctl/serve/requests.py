"""What a client may ask for: pydantic models with size limits, and the ftctl argv each becomes.

No field is a filesystem path. Refs are checked later by the core's own resolver (so a bad ref
gets the CLI's message); here only their length and alphabet are bounded.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
# a ref as the CLI takes it (v1.1, latest, model@v1.1): the resolver decides if it exists
Ref = Annotated[str, StringConstraints(min_length=1, max_length=80)]
Metric = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]

# --set overrides: only training/curation/eval/cycle knobs, scalar values. Keys that name files
# are refused (no path from a client), and `$`/`{` never pass (no ${ENV} interpolation of the
# service's secrets into a config a result echoes back).
OVERRIDE_KEY = re.compile(r"^(models\.[a-z][a-z0-9_-]{0,63}\.)?(train|curate|eval|cycle)(\.[A-Za-z0-9_]{1,64}){1,3}$")
OVERRIDE_VALUE = re.compile(r"^[A-Za-z0-9_.:+-]{0,64}$|^\[[A-Za-z0-9_.:+, -]{0,200}\]$")
PATH_KEYS = re.compile(r"(golden|eval_set|file|path|dir|config|template|url|dsn|endpoint)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_override(text: str) -> str:
    key, sep, value = text.partition("=")
    if not sep or not OVERRIDE_KEY.match(key) or PATH_KEYS.search(key):
        raise ValueError(f"override {text[:80]!r}: allowed are KEY=VALUE for train.*, curate.*, eval.*, cycle.* "
                         "(no keys naming files, urls or credentials)")
    if not OVERRIDE_VALUE.match(value):
        raise ValueError(f"override {key}: the value must be a number, a word or a [list] of them")
    return text


Override = Annotated[str, StringConstraints(max_length=300)]


class WithOverrides(Strict):
    set: list[Override] = Field([], max_length=32, description="--set KEY=VALUE overrides (train.*, eval.*, ...)")

    @field_validator("set")
    @classmethod
    def _overrides(cls, v: list[str]) -> list[str]:
        return [_check_override(x) for x in v]

    def globals(self) -> list[str]:
        return [a for o in self.set for a in ("--set", o)]


class FinetuneRequest(WithOverrides):
    """POST /finetune/start: `ftctl train` or a whole `ftctl cycle`."""

    kind: Literal["train", "cycle"] = "train"
    model: Name | None = None
    max_steps: int | None = Field(None, ge=1, le=1_000_000)
    epochs: float | None = Field(None, gt=0, le=1000)
    resume: bool = Field(False, description="train: finish the newest unfinished run from its checkpoint")
    major: bool = False
    from_: Ref | None = Field(None, alias="from", description="train: continue this version's adapter")
    force: bool = Field(False, description="cycle: train even with few new examples")

    @model_validator(mode="after")
    def _options_of_kind(self):
        if self.kind == "cycle" and (self.resume or self.major or self.from_ or self.epochs):
            raise ValueError("cycle takes model, max_steps, force and set; resume, major, from and epochs are train's")
        if self.kind == "train" and self.force:
            raise ValueError("force is cycle's option")
        return self

    def argv(self) -> list[str]:
        if self.kind == "cycle":
            return [*self.globals(), "cycle", *_opt("--model", self.model), *_opt("--max-steps", self.max_steps),
                    *(["--force"] if self.force else [])]
        return [*self.globals(), "train", *_opt("--model", self.model), *_opt("--max-steps", self.max_steps),
                *_opt("--epochs", self.epochs), *_opt("--from", self.from_),
                *(["--resume"] if self.resume else []), *(["--major"] if self.major else [])]

    def refs(self) -> list[str]:
        return [self.from_] if self.from_ else []


class EvaluateRequest(WithOverrides):
    """POST /evaluate: `ftctl eval --compare A B` as a job."""

    a: Ref = "stable"
    b: Ref = "latest"
    model: Name | None = None
    eval_set: Literal["test", "golden"] | None = None
    artifact: Annotated[str, StringConstraints(pattern=r"^(hf|gguf:[A-Za-z0-9_]{1,16})$")] | None = None
    metrics: list[Metric] = Field([], max_length=16)
    limit: int | None = Field(None, ge=1, le=1_000_000)
    gate: bool = False

    def argv(self) -> list[str]:
        return [*self.globals(), "eval", "--compare", self.a, self.b, *_opt("--model", self.model),
                *_opt("--eval-set", self.eval_set), *_opt("--artifact", self.artifact),
                *[a for m in self.metrics for a in ("--metric", m)], *_opt("--limit", self.limit),
                *(["--gate"] if self.gate else [])]

    def refs(self) -> list[str]:
        return [self.a, self.b]


class DeployRequest(Strict):
    ref: Ref
    canary: int | None = Field(None, ge=1, le=100)
    gate: bool | None = None

    def argv(self) -> list[str]:
        return ["deploy", self.ref, *_opt("--canary", self.canary),
                *([] if self.gate is None else ["--gate" if self.gate else "--no-gate"])]

    def refs(self) -> list[str]:
        return [self.ref]


class PromoteRequest(Strict):
    model: Name | None = None

    def argv(self) -> list[str]:
        return ["promote", *_opt("--model", self.model)]

    def refs(self) -> list[str]:
        return []


class RollbackRequest(Strict):
    model: Name | None = None
    to: Ref | None = None

    def argv(self) -> list[str]:
        return ["rollback", *_opt("--model", self.model), *_opt("--to", self.to)]

    def refs(self) -> list[str]:
        return [self.to] if self.to else []


def _opt(flag: str, value) -> list[str]:
    return [] if value is None else [flag, str(value)]
