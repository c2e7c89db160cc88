"""models.lock: the registry of every version, its lineage, metrics, exports and deployments.

Human-readable YAML with a schema version. Read strictly (a corrupt or hand-broken file is an
error, never silently rewritten) and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from ftctl.lib.atomic import write_text
from ftctl.errors import LockfileError

LOCK_FILE = "models.lock"
SCHEMA = 1
HEADER = "# models.lock: written by ftctl; edit with care (it is validated on every read).\n"


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class Entry(Loose):
    """A typed inner entry that still reads like the mapping it is in the file (``e["path"]``,
    ``e.get("quant")``, ``dict(e)``), and writes only the keys that were set."""

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None)
        if value is None:
            value = (self.model_extra or {}).get(key)
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        if key in self.model_fields_set or key in (self.model_extra or {}):
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key: str) -> bool:
        return key in self.model_fields_set or key in (self.model_extra or {})

    @model_serializer(mode="wrap")
    def _set_keys_only(self, handler):
        data = handler(self)
        if not isinstance(self, BaseModel):  # a plain dict appended to a typed list: as it is
            return data
        return {k: v for k, v in data.items() if k in self.model_fields_set or k in (self.model_extra or {})}


class ExportEntry(Entry):
    """One exported file of a version (``exports`` in models.lock)."""

    path: str  # relative to the workspace
    kind: str  # merged | gguf | lora-gguf | modelfile | what a third-party exporter writes
    quant: str | None = None
    sha256: str | None = None
    token_agreement: float | None = None
    bytes: int | None = None


class AdapterEntry(Entry):
    path: str | None = None  # adapters/<model>/<version>
    md5: str | None = None  # DVC's


class CanaryEntry(Entry):
    version: str
    percent: int = 0
    app: str | None = None  # the slot's process / app name


class VersionEntry(Loose):
    version: str
    parent: str | None = None
    created: str
    base: dict[str, Any] = {}  # ref, path, sha256
    dataset: dict[str, Any] = {}  # snapshot md5, rows, filters, window, card
    training: dict[str, Any] = {}  # trainer, params, seed, libraries, from
    adapter: AdapterEntry = AdapterEntry()
    metrics: dict[str, Any] = {}
    evals: list[dict[str, Any]] = []
    exports: list[ExportEntry] = []

    def find_export(self, kind: str, quant: str | None = None) -> ExportEntry | None:
        """The first exported file of ``kind`` (and ``quant``, any case; None: any quant)."""
        return next((e for e in self.exports if e.kind == kind
                     and (quant is None or str(e.quant).upper() == quant.upper())), None)


def forgotten_marks(entry: VersionEntry | None) -> list[dict[str, Any]]:
    """A version's `forgotten` marks: set by `ftctl forget` when its snapshot held a forgotten
    row (when, which tombstones, how many rows). Empty for a version trained on none."""
    return list((entry.model_extra or {}).get("forgotten") or []) if entry is not None else []


def flag_forgotten(entry: VersionEntry, mark: dict[str, Any]) -> None:
    entry.forgotten = [*forgotten_marks(entry), mark]


class BaselineEntry(Entry):
    """What an app served before ftctl's first deploy onto it (``<model>@baseline``): a version
    ftctl did not make, so rollback and canaries can return to it."""

    app: str  # the slot's process / app name
    model_path: str  # as the app's args had it
    path: str  # absolute
    sha256: str | None = None  # None: the file was not readable when recorded
    bytes: int | None = None
    args: list[str] = []  # the app's whole argument list then
    served_id: str | None = None  # the model id it answered with then (feedback may name it)
    recorded: str


class Deployment(Loose):
    stable: str | None = None
    canary: CanaryEntry | None = None
    apps: list[dict[str, Any]] = []


class ModelState(Loose):
    versions: dict[str, VersionEntry] = {}
    dataset: dict[str, Any] | None = None  # latest collected snapshot
    watermarks: dict[str, str] = {}  # per source
    deployment: Deployment = Deployment()
    baseline: BaselineEntry | None = None
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
    # re-validated first: entries appended as plain dicts (``exports.append({...})``) get their types
    lock = Lock.model_validate(lock.model_dump(by_alias=True, warnings=False))
    _yaml().dump(lock.model_dump(mode="json", by_alias=True, exclude_none=False), buf)
    return HEADER + buf.getvalue()


def write(path: Path, lock: Lock) -> None:
    write_text(path, dumps(lock))
