"""Base classes for the five plugin kinds.

A plugin class declares ``name`` and ``Config`` (pydantic). The core builds it with its
validated config and a :class:`Context`, calls it, and records the result; plugins never write
models.lock, tags, commits or DVC state (ARCHITECTURE.md, rule 1).

Heavy libraries (torch, transformers, llama_cpp) are imported inside methods, never at module
level: ``ftctl plugins`` and ``ftctl --help`` load every plugin module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ftctl.records import Example, Reject


class PluginConfig(BaseModel):
    """Base for plugin configs: unknown keys are errors that name the key."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Context:
    root: Path  # the workspace root
    model: str  # the model (agent) this run is for
    cache_dir: Path  # .ftctl/cache: local, git-ignored
    log: Callable[[str], None] = print  # human progress lines (rich console in the CLI)
    extra: dict[str, Any] = field(default_factory=dict)


class Plugin:
    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig, ctx: Context):
        self.config = config
        self.ctx = ctx


class Source(Plugin):
    """Streams interactions. ``read`` yields Example or Reject, never a list of them."""

    kind = "source"

    def read(self, since: str | None) -> Iterator[Example | Reject]:
        raise NotImplementedError

    def watermark(self) -> str | None:
        """After ``read`` is exhausted: the value to pass as ``since`` next time."""
        return None


class Trainer(Plugin):
    kind = "trainer"

    def train(self, request: Any) -> Any:
        raise NotImplementedError


class Evaluator(Plugin):
    """Scores predictions one example at a time so comparisons can be paired."""

    kind = "evaluator"
    needs_reference: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    def score(self, predictions: list[str], references: list[str | None],
              examples: list[Example]) -> list[float | None]:
        raise NotImplementedError


class Exporter(Plugin):
    kind = "exporter"

    def export(self, request: Any) -> Any:
        raise NotImplementedError


class Deployer(Plugin):
    kind = "deployer"


KINDS: dict[str, type[Plugin]] = {
    "source": Source,
    "trainer": Trainer,
    "evaluator": Evaluator,
    "exporter": Exporter,
    "deployer": Deployer,
}
