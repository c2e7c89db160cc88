"""ftctl.yaml: one typed schema, ${ENV} interpolation, command-line overrides.

Layout: top-level sections (``sources``, ``curate``, ``train``, ``eval``, ``export``,
``deploy``) are the defaults for every model; ``models.<name>.<section>`` overrides them key by
key for one model (one model per agent type). Plugin-specific settings live under the plugin's
name inside its section (``train.lora.r``, ``export.gguf.quants``, ``deploy.pm2.app``) and are
validated by that plugin's own ``Config``.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftctl.errors import ConfigError, ModelNotFound
from ftctl.lib.redact import redact

CONFIG_FILE = "ftctl.yaml"
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY_RE = re.compile(r"(password|passwd|secret|token|api_key|apikey|dsn)", re.I)
SECTIONS = ("sources", "curate", "train", "eval", "export", "deploy")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WithPlugins(BaseModel):
    """A section whose extra keys are plugin configs (validated when the plugin loads)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    chooser: ClassVar[str] = ""  # the key naming the plugin in use (train.trainer)

    @model_validator(mode="after")
    def _plugin_sections(self):
        # a plugin's settings are a mapping under its name; a bare `num_epochs: 3` here would
        # otherwise be taken for a plugin named num_epochs and ignored by every verb
        for key, value in (self.model_extra or {}).items():
            if value is not None and not isinstance(value, dict):
                chosen = getattr(self, self.chooser, None) if self.chooser else None
                where = f"; a {self.chooser}'s settings go under its name, e.g. {chosen}: {{{key}: ...}}" \
                    if chosen else ""
                raise ValueError(f"{key}: unknown key{where}")
        return self

    def plugin_config(self, name: str) -> dict[str, Any]:
        return dict((self.model_extra or {}).get(name) or {})


class SourceEntry(BaseModel):
    """One source: ``kind`` names the plugin; the other keys are that plugin's config."""

    model_config = ConfigDict(extra="allow")
    name: str
    kind: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "source name")

    def plugin_config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ScrubConfig(Strict):
    enabled: bool = True
    types: list[str] | None = None  # None: every type the scrubber knows (LOCATION is opt-in)
    names: bool = True  # person names, where a library can find them
    recognizers: str | None = None  # YAML of site-specific identifier formats (Presidio's format)
    on_error: Literal["reject", "fail"] = "reject"  # a row the scrubber cannot process: rejected, or collect stops
    # a longer text is not scrubbed: its row is rejected as too_large (or collect stops, on_error: fail)
    max_chars: int = Field(1_000_000, ge=1000)
    # the team's own code shapes never scrubbed (SKUs, internal product codes), on top of keep.yaml's
    keep: list[str] = []
    # the scrub check (ftctl/data/scrub_check.py): a placeholder type that changes more than
    # heavy_share of the assistant answers, or empties more than max_emptied of them, stops collect
    heavy_share: float = Field(0.05, ge=0, le=1)
    max_emptied: float = Field(0.01, ge=0, le=1)
    accept_heavy: list[str] = []  # placeholder types the team expects to change many answers

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: list[str]) -> list[str]:
        from pydantic_core import PydanticCustomError

        from ftctl.lib.keep import compile_user

        try:
            compile_user(v)
        except ConfigError as e:  # pydantic names the key; the message says which item and why
            raise PydanticCustomError("keep_regex", e.message.removeprefix("curate.scrub.keep")) from None
        return v


class SplitConfig(Strict):
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)
    salt: str = "ftctl"  # part of the stable hash: changing it reshuffles every split


class CurateConfig(Strict):
    min_rating: float | None = None
    min_reward: float | None = None
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    agent_types: list[str] | None = None
    days_back: int | None = Field(None, ge=1)
    window_start: str | None = None  # ISO date/time
    window_end: str | None = None
    limit: int | None = Field(None, ge=1)
    dedup: Literal["normalized", "exact", "off"] = "normalized"
    conflict: Literal["best_rating", "latest", "drop"] = "best_rating"
    keep_negative: bool = True  # kept aside as preference data
    scrub: ScrubConfig = ScrubConfig()
    split: SplitConfig = SplitConfig()
    golden: str | None = None  # a JSONL eval set never trained on
    collect_before_train: bool = False


class TrainConfig(WithPlugins):
    chooser: ClassVar[str] = "trainer"
    trainer: str = "lora"
    # experiment trackers of every trainer (lora, dpo, kto): ftctl.lib.tracking
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = ["tensorboard"]
    mlflow_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else MLflow's own (./mlruns)
    mlflow_experiment: str | None = None  # default: ftctl-<model>
    wandb_project: str | None = None  # default: ftctl-<model>
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: nothing leaves the machine (`wandb sync`)


class GateConfig(Strict):
    """`ftctl eval --gate`, deploy and cycle: may the candidate replace what it is compared with?"""

    metric: str = "rougeL"
    min_improvement: float = 0.0  # the mean difference must reach this (in the metric's units)
    confidence: float = Field(0.95, gt=0, lt=1)  # ... and be significant at this level
    guards: list[str] = []  # metrics that must not get significantly worse
    # absolute ceilings on the candidate's mean, e.g. {memorisation: 0, phi_in_output: 0}: fail on any leak
    max: dict[str, float] = {}
    against: str = "stable"  # the ref a candidate is compared with (base when nothing is stable)


class EvalConfig(WithPlugins):
    metrics: list[str] = ["exact_match", "token_f1", "bleu", "rougeL"]
    eval_set: str = "test"  # test | golden | path to a JSONL file
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    limit: int | None = Field(None, ge=1)
    bootstrap: int = Field(2000, ge=100)
    seed: int = 0
    stop: list[str] = []  # extra stop strings (the chat template's end-of-turn is always one)
    artifact: str = "hf"  # hf | gguf:<QUANT>: what `ftctl eval` scores by default
    n_ctx: int = Field(2048, ge=256)  # GGUF backend context, as the server runs it
    parallel: int = Field(8, ge=1)  # GGUF backend: answers decoded at once (llama-server slots of n_ctx each)
    # GGUF backend: a file with K-quant, IQ or F16 matrices decodes one answer at a time, since
    # llama.cpp's batched kernels for those round differently (ftctl.lib.generation.BATCH_INVARIANT)
    reproducible: bool = True
    # the HF backend's device (auto: CUDA when present, weights in bf16/fp16; else the CPU in fp32)
    device: str = "auto"
    # GGUF backend: layers llama.cpp offloads to the GPU (-1: all); unset: all when the llama.cpp
    # build can offload, none otherwise
    n_gpu_layers: int | None = Field(None, ge=-1)

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v):
        from ftctl.lib.device import check_spec

        return check_spec(v)
    top_changed: int = Field(5, ge=0)  # examples shown side by side in a comparison
    # guard tasks (plugins of kind guard, e.g. capitals, currencies) run beside the eval set on both
    # sides of a comparison: a drop of more than guards_margin (accuracy), significant, fails the gate
    guards_tasks: list[str] = []
    guards_margin: float = Field(0.05, ge=0, le=1)
    guards_limit: int = Field(40, ge=1)  # questions per guard task
    gate: GateConfig = GateConfig()


class ExportConfig(WithPlugins):
    chooser: ClassVar[str] = "exporter"
    exporter: str = "gguf"


class CanaryConfig(Strict):
    """`ftctl canary check` (and cycle while a canary is live): judge a canary on live feedback."""

    steps: list[int] = [5, 20, 50, 100]  # traffic percentages a good canary climbs; the last step promotes
    min_rated: int = Field(30, ge=2)  # rated answers per version (since the last step) before deciding
    signal: Literal["auto", "rating", "reward"] = "auto"  # auto: ratings when the window has any, else rewards
    max_drop: float = Field(0.2, ge=0)  # how much lower (signal units) the canary may be and still step up
    confidence: float = Field(0.95, gt=0, lt=1)
    max_latency_ratio: float = Field(1.5, gt=0)  # canary ms/token over stable's (llama-server /metrics)
    metrics_url: str = "http://127.0.0.1:{port}/metrics"  # llama-server needs --metrics
    min_requests: int = Field(50, ge=1)  # canary requests (deployer's access log) before its error rate counts
    max_error_increase: float = Field(0.01, ge=0, le=1)  # canary 5xx rate may exceed stable's by this much
    metrics_timeout: float = Field(5.0, gt=0)
    bootstrap: int = Field(2000, ge=100)


class DriftConfig(Strict):
    """`ftctl drift` (and cycle): new feedback against the training snapshot."""

    enabled: bool = True
    ngram: int = Field(3, ge=1, le=8)  # word n-grams for novelty
    min_rated: int = Field(30, ge=2)  # per served version and window, for the rating test
    confidence: float = Field(0.95, gt=0, lt=1)
    retrain_on_drop: bool = True  # a significant rating drop on stable trains below min_new_examples


class TriggersConfig(Strict):
    """`ftctl cycle` trains when any of these signals fires (each reported with its evidence);
    a signal set to null is off. An unknown signal is a config error."""

    new_rows: int | None = Field(None, ge=1)  # new kept training rows since the latest version (null: min_new_examples)
    negatives: int | None = Field(100, ge=1)  # thumbs-down, low-rated or negative-reward rows since the latest version
    negative_rating: float = Field(2, ge=1, le=5)  # a rating at or below this counts as negative
    drift: float | None = Field(0.25, gt=0, le=1)  # content drift: new prompts' unseen-n-gram share above the
    # reference's own (drift's novelty); null: off
    rating_drop: bool | None = None  # a significant rating drop on stable (null: drift.retrain_on_drop)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown trigger signal {unknown[0]!r} (known: {', '.join(cls.model_fields)})")
        return data


class DeployConfig(WithPlugins):
    chooser: ClassVar[str] = "deployer"
    deployer: str = "pm2"
    canary: CanaryConfig = CanaryConfig()
    gate: bool = False  # run the eval gate (eval.gate) before a deploy; `--no-gate` skips it


class CycleConfig(Strict):
    """`ftctl cycle`: top-level defaults; ``models.<name>.cycle`` overrides them per model
    (``schedule`` is the workspace's: one cron entry runs every model)."""

    schedule: str = "0 3 * * *"  # cron expression, for `ftctl cycle --install-cron`
    min_new_examples: int = Field(50, ge=1)
    export: bool = True
    deploy: bool = False
    canary_percent: int = Field(20, ge=1, le=100)
    gate: bool = True  # the eval gate (eval.gate) before export and deploy; false: the canary's users are the judge
    # what a new version starts from. base (the default): every version is base + the whole
    # snapshot, reproducible on its own, and `forget --retrain` truly erases (an adapter continued
    # from a parent keeps whatever the parent learnt). stable | latest: continue that version on
    # the rows its lineage has not seen (cheaper nights; benchmarks/incremental.py measures what
    # it forgets). With nothing stable yet, or a parent reached by `forget`, the cycle uses base.
    train_from: Literal["base", "stable", "latest"] = "base"
    triggers: TriggersConfig = TriggersConfig()
    drift: DriftConfig = DriftConfig()


class ServeConfig(Strict):
    """`ftctl serve`: the HTTP service (its token is read from the environment, never from here)."""

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    token_env: str = "FTCTL_SERVE_TOKEN"  # the variable holding the bearer token of mutating routes
    lock_wait: float = Field(0, ge=0)  # a job waits this long for another run's lock, then is refused
    max_queue: int = Field(20, ge=1)  # queued jobs beyond this are refused (429)
    url: str | None = None  # where the running service answers; `ftctl doctor` checks it when set


class DvcConfig(Strict):
    remote: str | None = None  # name of a DVC remote; None: the workspace default
    push: bool = True


class ModelConfig(Strict):
    """Everything one model's runs need, after merging defaults and its overrides."""

    name: str
    base: str
    trust_remote_code: bool = False
    sources: list[SourceEntry] = []
    curate: CurateConfig = CurateConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    deploy: DeployConfig = DeployConfig()
    cycle: CycleConfig = CycleConfig()


class ModelEntry(Strict):
    base: str | None = None
    trust_remote_code: bool | None = None
    sources: list[dict[str, Any]] | None = None
    curate: dict[str, Any] = {}
    train: dict[str, Any] = {}
    eval: dict[str, Any] = {}
    export: dict[str, Any] = {}
    deploy: dict[str, Any] = {}
    cycle: dict[str, Any] = {}


class FtctlConfig(Strict):
    schema_version: int = Field(1, alias="schema")
    default_model: str
    base: str = "smollm2-135m-instruct"
    models: dict[str, ModelEntry]
    sources: list[dict[str, Any]] = []
    curate: dict[str, Any] = {}
    train: dict[str, Any] = {}
    eval: dict[str, Any] = {}
    export: dict[str, Any] = {}
    deploy: dict[str, Any] = {}
    cycle: CycleConfig = CycleConfig()
    dvc: DvcConfig = DvcConfig()
    serve: ServeConfig = ServeConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
        if not v:
            raise ValueError("at least one model is required")
        for name in v:
            check_name(name, "model name")
        return v

    def model_names(self) -> list[str]:
        return list(self.models)

    def model(self, name: str | None = None) -> ModelConfig:
        """The merged, validated settings of one model (the default one when ``name`` is None)."""
        name = name or self.default_model
        if name not in self.models:
            raise ModelNotFound(
                f"no model named {name!r} in {CONFIG_FILE}",
                hint=f"models: {', '.join(self.models)}",
            )
        entry = self.models[name]
        merged: dict[str, Any] = {"name": name, "base": entry.base or self.base}
        if entry.trust_remote_code is not None:
            merged["trust_remote_code"] = entry.trust_remote_code
        merged["sources"] = entry.sources if entry.sources is not None else self.sources
        for section in SECTIONS[1:]:
            merged[section] = deep_merge(getattr(self, section), getattr(entry, section))
        merged["cycle"] = deep_merge(self.cycle.model_dump(), entry.cycle)
        return validate_model(ModelConfig, merged, f"models.{name}")


def check_name(value: str, what: str) -> str:
    """Names end up in paths and git tags: lowercase letters, digits, '-' and '_' only."""
    if not NAME_RE.match(value or ""):
        raise ValueError(
            f"invalid {what} {value!r}: use lowercase letters, digits, '-' or '_' "
            "(starting with a letter, at most 64)"
        )
    return value


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def validate_model(schema: type[BaseModel], data: Any, where: str) -> Any:
    """Validate ``data`` against ``schema``; errors name the dotted key and what was expected."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            key = f"{where}.{loc}" if where and loc else (where or loc)
            if err["type"] == "extra_forbidden":
                msg = "unknown key" + did_you_mean(schema, err["loc"])
            else:
                msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}")
        raise ConfigError(
            f"invalid configuration: {lines[0]}" + (f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""),
            hint="; ".join(lines[1:4]) or "see `ftctl config show` and the README's config reference",
        ) from None


def did_you_mean(schema: type[BaseModel], loc: tuple) -> str:
    """ " (did you mean 'alpha'?)" for an unknown key: the closest of the keys (and other tools'
    names, PluginConfig.aliases) that the section at ``loc`` takes."""
    import difflib

    node: Any = schema
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(node, type) and issubclass(node, BaseModel)):
            continue  # a list index: same model type
        field = node.model_fields.get(part)
        if field is None:
            return ""
        node = _model_in(field.annotation)
    if not (isinstance(node, type) and issubclass(node, BaseModel)):
        return ""
    names = {k: k for k in node.model_fields} | dict(getattr(node, "aliases", {}))
    close = difflib.get_close_matches(str(loc[-1]).lower(), list(names), n=1, cutoff=0.6)
    if not close:
        return f" (known: {', '.join(sorted(node.model_fields))})" if len(node.model_fields) <= 12 else ""
    return f" (did you mean {names[close[0]]!r}?)"


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --- loading -------------------------------------------------------------------------------


class Unset(str):
    """A plugin setting whose ${VAR} is not set, kept as written: an error only where a command
    builds that plugin (``ftctl export`` needs no source's DSN); `config validate` checks all."""

    var: str = ""
    where: str = ""

    def error(self) -> ConfigError:
        return ConfigError(f"{self.where}: environment variable {self.var} is not set",
                           hint=f"export {self.var}=... or write ${{{self.var}:-default}} in {CONFIG_FILE}")


# plugin sections (sources, and train/eval/export/deploy.<plugin>): their ${VAR}s resolve lazily
_PLUGIN_PATH = re.compile(r"^(models\.[^.]+\.)?(sources\[\d+\]|(train|eval|export|deploy)\.[^.\[]+)[.\[]")


def interpolate(data: Any, env: dict[str, str], path: str = "", secrets: set[str] | None = None,
                lazy: bool = False) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; record which keys got a value.
    ``lazy``: a missing variable in a plugin section becomes an :class:`Unset` (checked on use)."""
    if isinstance(data, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k), secrets, lazy) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, f"{path}[{i}]", secrets, lazy) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:
        missing: list[str] = []

        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            if var in env:
                return env[var]
            if default is not None:
                return default
            missing.append(var)
            return m.group(0)

        if secrets is not None:
            secrets.add(path)
        out = _ENV_RE.sub(sub, data)
        if missing:
            unset = Unset(out)
            unset.var, unset.where = missing[0], path
            if not (lazy and _PLUGIN_PATH.match(path)):
                raise unset.error()
            return unset
        return out
    return data


def check_set(data: Any) -> None:
    """Raise for the first :class:`Unset` value in a plugin's config (before it is built)."""
    if isinstance(data, Unset):
        raise data.error()
    if isinstance(data, dict):
        for v in data.values():
            check_set(v)
    elif isinstance(data, list):
        for v in data:
            check_set(v)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lora.r=32`` -> (["train", "lora", "r"], 32); the value is parsed as YAML."""
    from ruamel.yaml import YAML

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE", hint="e.g. --set train.lora.r=32")
    value = YAML(typ="safe").load(raw) if raw.strip() else ""
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise ConfigError(f"--set {text!r}: {k} is not a section")
            node = node[k]
        node[keys[-1]] = value
    return data


def read_yaml(path: Path) -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path.name} is not valid YAML: {problem}{where}",
                          hint="fix the file; `ftctl config validate` checks it") from None


class LoadedConfig:
    """The validated config plus what `config show` needs (which keys hold secrets)."""

    def __init__(self, config: FtctlConfig, raw: dict[str, Any], secret_keys: set[str]):
        self.config = config
        self.raw = raw
        self.secret_keys = secret_keys

    def masked(self) -> dict[str, Any]:
        return mask(self.raw, self.secret_keys)


def load(path: Path, overrides: list[str] = (), env: dict[str, str] | None = None, *,
         lazy: bool = True) -> LoadedConfig:
    """``lazy``: ${VAR}s of plugin sections resolve when a command builds the plugin (the
    default); ``lazy=False`` (`config validate`) requires every one of them now."""
    if not path.exists():
        raise ConfigError(f"{path} does not exist", hint="run `ftctl init` to create one")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} must be a mapping of sections", hint="see `ftctl init`")
    data = apply_overrides(data, list(overrides))
    secrets: set[str] = set()
    data = interpolate(data, dict(os.environ if env is None else env), "", secrets, lazy)
    config = validate_model(FtctlConfig, data, "")
    if config.default_model not in config.models:
        raise ConfigError(f"default_model: {config.default_model!r} is not one of models "
                          f"({', '.join(config.models)})")
    for name in config.models:  # every model's merged sections must validate too
        config.model(name)
    return LoadedConfig(config, data, secrets)


def mask(data: Any, secret_keys: set[str], path: str = "") -> Any:
    """Hide values from ${ENV} and keys that look secret; passwords inside DSNs/URLs too."""
    if isinstance(data, dict):
        return {k: mask(v, secret_keys, f"{path}.{k}" if path else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [mask(v, secret_keys, f"{path}[{i}]") for i, v in enumerate(data)]
    if isinstance(data, str):
        leaf = path.rsplit(".", 1)[-1]
        if path in secret_keys or _SECRET_KEY_RE.search(leaf):
            return redact(data) if "://" in data or "=" in data else "****"
        return redact(data)
    return data
