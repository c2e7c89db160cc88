"""Which version produced a feedback row: its ``served_model`` mapped onto models.lock.

``ftctl deploy`` starts every server with the alias ``<model>@<version>``, so the model id
llama-server answers with (and a team's app stores beside the answer) names the version. A
value that names no known version of this model is kept and counted as ``unmatched``, never
guessed and never dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

NONE = "none"  # the row has no served_model (a source that does not map the column)


@dataclass
class Attribution:
    """Per-version counts of the rows that named a served model."""

    versions: Counter = field(default_factory=Counter)  # version -> rows
    unmatched: Counter = field(default_factory=Counter)  # raw served_model value -> rows
    none: int = 0

    def add(self, served: str | None, version: str | None, rows: int = 1) -> None:
        if served is None:
            self.none += rows
        elif version is None:
            self.unmatched[served] += rows
        else:
            self.versions[version] += rows

    def to_dict(self) -> dict:
        return {"versions": dict(sorted(self.versions.items())), "unmatched": dict(self.unmatched.most_common()),
                "none": self.none, "unattributed": sum(self.unmatched.values()) + self.none}


class Resolver:
    """served_model value -> version of ``model`` (or None when it matches no version).

    ``aliases`` maps other served ids to a version: the id the app answered with before ftctl's
    first deploy names its ``baseline``."""

    def __init__(self, model: str, versions: Iterable[str], aliases: dict[str, str] | None = None):
        self.model = model
        self.versions = set(versions)
        self.aliases = dict(aliases or {})

    @classmethod
    def of(cls, model: str, state) -> Resolver:
        """For a model's recorded state: its versions, and its baseline when one is recorded."""
        if state is None:
            return cls(model, ())
        versions, aliases = {*state.versions, "base"}, {}  # model@base: the untuned base (deploy base)
        if state.baseline:
            versions.add("baseline")
            if state.baseline.served_id:
                aliases[state.baseline.served_id] = "baseline"
        return cls(model, versions, aliases)

    def __call__(self, served: str | None) -> str | None:
        if not served:
            return None
        if served.strip() in self.aliases:
            return self.aliases[served.strip()]
        name, sep, ver = served.strip().rpartition("@")
        if not sep:  # a bare "v1.1" is the model's own version, as on the command line
            name, ver = self.model, served.strip()
        return ver if name == self.model and ver in self.versions else None


def attribute(model: str, versions: Iterable[str], served: Iterable[str | None]) -> Attribution:
    resolve, out = Resolver(model, versions), Attribution()
    for s in served:
        out.add(s, resolve(s))
    return out
