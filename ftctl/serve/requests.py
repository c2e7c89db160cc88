"""What a client may ask for: pydantic models with size limits, and the ftctl argv each becomes.

No field is a filesystem path. Refs are checked later by the core's own resolver (so a bad ref
gets the CLI's message); here only their length and alphabet are bounded.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, field_validator, model_validator

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
# a ref as the CLI takes it (v1.1, latest, model@v1.1): the resolver decides if it exists
Ref = Annotated[str, StringConstraints(min_length=1, max_length=80)]
Metric = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
DocName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]  # a file name, no path
# the whole request body is limited to 64 KiB (serve/body_limit.py): larger sets go in a folder, `--sources`
DocText = Annotated[str, StringConstraints(min_length=1, max_length=64 * 1024)]

# --set overrides: an allow-list of training and eval settings, scalar values (issue 20). The
# service never changes how data is scrubbed (curate.scrub.*), never takes a key naming an
# environment variable (*_env: it would point a plugin at the service's secrets) and never moves
# the gate (eval.gate.*): those are the workspace's decisions, in ftctl.yaml. Nothing else
# passes either: not curation, not keys naming files, and `$`/`{` never (no ${ENV} interpolation
# of the service's secrets into a config a result echoes back).
TRAIN_FIELDS = frozenset({
    "r", "alpha", "dropout", "target_modules", "epochs", "max_steps", "batch_size", "gradient_accumulation",
    "learning_rate", "scheduler", "warmup", "weight_decay", "max_length", "gradient_checkpointing", "precision",
    "seed", "packing", "qlora", "checkpoint_every", "eval_every", "early_stopping", "log_every", "beta",
    "desirable_weight", "undesirable_weight"})
EVAL_FIELDS = frozenset({"metrics", "max_new_tokens", "batch_size", "limit", "bootstrap", "seed", "top_changed",
                         "n_ctx", "artifact"})
_MODEL = r"(?:models\.[a-z][a-z0-9_-]{0,63}\.)?"
ALLOWED_KEY = re.compile(_MODEL + r"(?:train\.trainer|train\.[a-z][a-z0-9_]{0,63}\.(?P<train>[a-z_]{1,64})"
                         r"|eval\.(?P<eval>[a-z_]{1,64}))$")
OVERRIDE_VALUE = re.compile(r"^[A-Za-z0-9_.:+-]{0,64}$|^\[[A-Za-z0-9_.:+, -]{0,200}\]$")
ALLOWED = (f"train.<trainer>.{{{','.join(sorted(TRAIN_FIELDS))}}}, train.trainer, "
           f"eval.{{{','.join(sorted(EVAL_FIELDS))}}}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def refusal(key: str) -> str | None:
    """Why the service refuses to override ``key`` (None: it is on the allow-list)."""
    leaf = key.rsplit(".", 1)[-1]
    if re.search(r"(^|\.)curate\.scrub(\.|$)", key):
        return "scrubbing is never changed by a request (PHI protection): edit ftctl.yaml"
    if leaf.endswith("_env"):
        return "a key naming an environment variable is never taken from a request"
    if re.search(r"(^|\.)(eval\.gate|deploy\.gate)(\.|$)", key):
        return "the gate is the workspace's (ftctl.yaml), never a request's"
    m = ALLOWED_KEY.match(key)
    if not m or (m["train"] and m["train"] not in TRAIN_FIELDS) or (m["eval"] and m["eval"] not in EVAL_FIELDS):
        return f"not a training or eval setting a request may change (allowed: {ALLOWED})"
    return None


def _check_override(text: str) -> str:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"override {text[:80]!r}: expected KEY=VALUE")
    why = refusal(key)
    if why:
        raise ValueError(f"override of {key[:100]} refused: {why}")
    if not OVERRIDE_VALUE.match(value):
        raise ValueError(f"override {key}: the value must be a number, a word or a [list] of them")
    return text


Override = Annotated[str, StringConstraints(max_length=300)]


class WithOverrides(Strict):
    set: list[Override] = Field([], max_length=32, description=f"--set KEY=VALUE overrides; allowed: {ALLOWED}")

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
    sources: dict[DocName, DocText] = Field({}, max_length=200, description=(
        "source documents by name, their text inline: groundedness checks each answer against them "
        "(written to the workspace's cache under a content hash; no client path)"))
    _sources_dir: str | None = PrivateAttr(None)  # where the service wrote ``sources``

    def argv(self) -> list[str]:
        return [*self.globals(), "eval", "--compare", self.a, self.b, *_opt("--model", self.model),
                *_opt("--eval-set", self.eval_set), *_opt("--artifact", self.artifact),
                *[a for m in self.metrics for a in ("--metric", m)], *_opt("--limit", self.limit),
                *_opt("--sources", self._sources_dir), *(["--gate"] if self.gate else [])]

    def write_sources(self, cache_dir: Path) -> None:
        """Write ``sources`` under ``cache_dir/sources/<sha256>/`` for the job's ``--sources``."""
        if not self.sources:
            return
        from ftctl.lib.atomic import write_text

        digest = hashlib.sha256(json.dumps(self.sources, sort_keys=True).encode()).hexdigest()[:16]
        folder = cache_dir / "sources" / digest
        for name, text in self.sources.items():
            write_text(folder / f"{name}.txt", text)
        self._sources_dir = str(folder)

    def refs(self) -> list[str]:
        return [self.a, self.b]


class DeployRequest(Strict):
    ref: Ref
    canary: int | None = Field(None, ge=1, le=100)
    gate: bool | None = None

    @field_validator("gate")
    @classmethod
    def _gate(cls, v: bool | None) -> bool | None:
        if v is False:
            raise ValueError("gate: false refused: a request may ask for the gate, never skip it "
                             "(deploy.gate in ftctl.yaml decides)")
        return v

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
