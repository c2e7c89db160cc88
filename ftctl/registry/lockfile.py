"""models.lock: the registry of every version, its lineage, metrics, exports and deployments.

Human-readable YAML with a schema version. Read strictly (a corrupt or hand-broken file is an
error, never silently rewritten) and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ftctl.util.atomic import write_text
from ftctl.errors import LockfileError

LOCK_FILE = "models.lock"
SCHEMA = 1
HEADER = "# models.lock: written by ftctl; edit with care (it is validated on every read).\n"


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class VersionEntry(Loose):
    version: str
    parent: str | None = None
    created: str
    base: dict[str, Any] = {}  # ref, path, sha256
    dataset: dict[str, Any] = {}  # snapshot md5, rows, filters, window, card
    training: dict[str, Any] = {}  # trainer, params, seed, libraries, from
    adapter: dict[str, Any] = {}  # path, md5
    metrics: dict[str, Any] = {}
    evals: list[dict[str, Any]] = []
    exports: list[dict[str, Any]] = []


class Deployment(Loose):
    stable: str | None = None
    canary: dict[str, Any] | None = None  # {"version", "percent"}
    apps: list[dict[str, Any]] = []


class ModelState(Loose):
    versions: dict[str, VersionEntry] = {}
    dataset: dict[str, Any] | None = None  # latest collected snapshot
    watermarks: dict[str, str] = {}  # per source
    deployment: Deployment = Deployment()
    history: list[dict[str, Any]] = []


class Lock(Loose):
    schema_version: int = Field(SCHEMA, alias="schema")
    models: dict[str, ModelState] = {}

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def state(self, model: str) -> ModelState:
        return self.models.setdefault(model, ModelState())


def _yaml():
    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    y.sort_base_mapping_type_on_output = False
    return y


def read(path: Path) -> Lock:
    from ruamel.yaml.error import YAMLError

    if not path.exists():
        raise LockfileError(f"{path.name} is missing", hint="run `ftctl init` here, or restore it with `git checkout -- models.lock`")
    text = path.read_text(encoding="utf-8")
    try:
        data = _yaml().load(text) if text.strip() else {}
    except YAMLError as e:
        raise LockfileError(f"{path.name} is corrupt: {str(e).splitlines()[0]}",
                            hint="restore it with `git checkout -- models.lock`; ftctl never rewrites a broken lock") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LockfileError(f"{path.name} is corrupt: expected a mapping at the top",
                            hint="restore it with `git checkout -- models.lock`")
    schema = data.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise LockfileError(f"{path.name} has schema {schema!r}; this ftctl reads schema {SCHEMA}",
                            hint="upgrade ftctl, or restore it with `git checkout -- models.lock`")
    try:
        return Lock.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise LockfileError(f"{path.name} is corrupt at {loc}: {err['msg']}",
                            hint="restore it with `git checkout -- models.lock`") from None


def dumps(lock: Lock) -> str:
    buf = io.StringIO()
    _yaml().dump(lock.model_dump(mode="json", by_alias=True, exclude_none=False), buf)
    return HEADER + buf.getvalue()


def write(path: Path, lock: Lock) -> None:
    write_text(path, dumps(lock))
