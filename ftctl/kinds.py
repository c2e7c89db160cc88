"""The plugin contract: one abstract base class per kind, with the typed values they exchange.

A plugin class declares ``name`` and ``Config`` (pydantic, every field with a description).
The core builds it with its validated config and a :class:`Context`, calls it, and records the
result; plugins never write models.lock, tags, commits or DVC state (docs/architecture.md: the
contract is the bottom layer and imports nothing above it; plugins reach it through ftctl.api).

Each kind has a few ``@abstractmethod`` primitives that a plugin must implement, and optional
abilities declared here with typed no-op defaults (``preflight``, ``preview``, pairwise judging,
needing a generation backend): the core calls them on every plugin and never asks ``hasattr``.
The shape follows simonw/llm's ``Model.execute`` (few primitives, the rest built on top by the
core) and axolotl's ``integrations/base.py`` (every optional hook a typed no-op).

Heavy libraries (torch, transformers, llama_cpp) are imported inside methods, never at module
level: ``ftctl plugins`` and ``ftctl --help`` load every plugin module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, model_validator

from ftctl.records import Example, Reject

Log = Callable[[str], None]  # progress lines for people: ``print`` by default, a rich console in the CLI


class PluginConfig(BaseModel):
    """Base for plugin configs: unknown keys are errors that name the key (with a "did you
    mean" from ftctl.config.validate_model).

    Give every field ``Field(default, description=...)``: ``ftctl plugins NAME`` prints it.
    ``aliases`` maps other tools' names of a field (Axolotl's ``lora_alpha``) to it: accepted
    as written, stored under the plugin's own name; giving both is an error."""

    model_config = ConfigDict(extra="forbid")
    aliases: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        return cls.canonical(data) if isinstance(data, dict) else data

    @classmethod
    def canonical(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with other tools' names replaced by the plugin's own."""
        if not cls.aliases or not (set(data) & set(cls.aliases)):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = cls.aliases.get(key, key)
            if name in out or (name != key and name in data):
                raise ValueError(f"{key} and {name} are the same setting ({key} is {name}'s other name): keep one")
            out[name] = value
        return out


@dataclass
class Context:
    """What the core tells every plugin about the run it is part of."""

    root: Path  # the workspace root
    model: str  # the model (agent) this run is for
    cache_dir: Path  # .ftctl/cache: local, git-ignored; plugins may cache here
    log: Log = print  # human progress lines (a rich console in the CLI; never stdout in --json)
    instance: str = ""  # this plugin's name in ftctl.yaml when it differs from the plugin's (a source's `name`)


class Plugin(ABC):
    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig, ctx: Context):
        self.config = config
        self.ctx = ctx

    def preflight(self) -> None:
        """Cheap checks before anything loads or changes (a missing tool, no GPU for QLoRA).

        Raise an ``FtctlError`` to stop the command; the default checks nothing."""


# --- shared values --------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelRef:
    """A base model resolved to a local Hugging Face directory."""

    ref: str  # what the user wrote (catalogue name, directory, .gguf file)
    path: Path  # an HF directory: config.json, safetensors, tokenizer
    sha256: str  # of the GGUF file, or of the HF directory's files (lineage)
    source_file: Path | None = None  # the .gguf it was converted from, if any
    trust_remote_code: bool = False

    def lineage(self) -> dict:
        return {"ref": self.ref, "sha256": self.sha256, "path": str(self.source_file or self.path)}


# --- source -----------------------------------------------------------------------------------


class Source(Plugin):
    """Streams interactions. ``read`` yields Example or Reject, never a list of them."""

    kind = "source"

    @property
    def source_name(self) -> str:
        """The name examples carry in ``Example.source`` (the entry's name in ftctl.yaml)."""
        return self.ctx.instance or self.name

    @abstractmethod
    def read(self, since: str | None) -> Iterator[Example | Reject]:
        """Every row newer than the watermark ``since`` (None: all), as a stream."""

    def watermark(self) -> str | None:
        """After ``read`` is exhausted: the value to pass as ``since`` next time."""
        return None


# --- trainer ----------------------------------------------------------------------------------


@dataclass
class TrainRequest:
    """What a trainer gets: everything it needs, nothing it may write outside ``output_dir``."""

    base: BaseModelRef
    train_file: Path  # a JSONL snapshot: one Example per line
    val_file: Path | None
    output_dir: Path  # the run directory: checkpoints and the final adapter go here
    init_adapter: Path | None = None  # --from: continue this adapter
    resume: bool = False  # continue from the newest complete checkpoint in output_dir
    show_progress: bool = False  # a live progress display (a terminal is attached)
    # transformers' report_to (tensorboard, mlflow, wandb): the trackers the core set up for this
    # run (ftctl.lib.tracking; their settings are in the environment); run_name: model@version
    report_to: list[str] = field(default_factory=list)
    run_name: str | None = None


@dataclass
class TrainResult:
    adapter_dir: Path  # PEFT format (adapter_config.json + adapter_model.safetensors)
    steps: int
    metrics: dict[str, Any]  # train_loss, val_loss, ... (None values are dropped)
    tokens: int
    tokens_per_s: float | None
    seconds: float
    params: dict[str, Any]  # the effective hyperparameters, recorded in the lineage
    seed: int
    data: dict[str, Any] = field(default_factory=dict)  # what the data became (examples used/skipped)
    libraries: dict[str, str] = field(default_factory=dict)  # library versions, for the lineage
    peak_rss_mb: float | None = None  # the training process's peak resident memory
    # how the base was loaded under the adapter when it is not the base as stored, e.g. QLoRA's
    # {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4", ...}: the export merge and the
    # evaluation load it the same way, so they run the function that was trained
    base_quantization: dict[str, Any] | None = None


@dataclass
class TrainPlan:
    """What a run will do, from the trainer's own tokenisation (``Trainer.plan``; ``--dry-run``)."""

    conversations: int  # trainable conversations (after max_length)
    processes: int
    conversations_per_step: int  # batch_size x gradient_accumulation x processes
    steps_per_epoch: int
    optimizer_steps: int
    epochs: float  # passes over the data the steps make
    tokens_per_step: int  # mean real (non-padding) tokens
    trained_tokens_per_step: int  # mean tokens that carry loss
    rows_per_step: float  # mean rows the collator makes (packing puts conversations together)
    warmup_steps: int
    scheduler: str
    schedule_end_epoch: float | None  # where a decaying LR reaches zero (None: constant LR)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainPreview:
    """What ``ftctl train --preview`` shows, from the trainer's own tokenisation."""

    max_length: int
    lengths: list[int]  # tokens of each example that has something to learn
    examples: int  # examples read
    no_assistant_turn: int  # examples with nothing to learn
    example: str | None = None  # one example rendered with its trained tokens marked


@dataclass
class MemoryEstimate:
    """A run's predicted peak memory on one device (``Trainer.memory``; ``ftctl train --preview``)."""

    device: str  # cpu | cuda:N, or a named card ("24 GB GPU")
    device_bytes: int  # what the device has (0: unknown)
    parts: dict[str, int]  # bytes by part: weights, adapter_and_optimizer, activations, overhead...
    adapter_params: int = 0
    notes: list[str] = field(default_factory=list)  # the settings the prediction assumed
    advice: list[str] = field(default_factory=list)  # settings that lower it, cheapest first

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.device_bytes <= 0 or self.total <= self.device_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "fits": self.fits}


class Trainer(Plugin):
    kind = "trainer"

    @abstractmethod
    def train(self, request: TrainRequest) -> TrainResult:
        """Train an adapter inside ``request.output_dir``; resume when ``request.resume``."""

    def preview(self, base: BaseModelRef, train_file: Path) -> TrainPreview | None:
        """How the training file would be tokenised, without training; None: not supported."""
        return None

    def plan(self, base: BaseModelRef, train_file: Path, processes: int = 1) -> TrainPlan | None:
        """Optimizer steps, conversations and tokens per step, epochs, warmup, schedule end and
        warnings (``ftctl.lib.plan.make_plan``, public as ``ftctl.api.make_plan``), without training; None: not supported."""
        return None

    def memory(self, base: BaseModelRef, device=None, plan: TrainPlan | None = None) -> MemoryEstimate | None:
        """The run's predicted peak memory on ``device`` (a ``ftctl.api.Device``; None: the one the
        config names), from the base's config without loading weights (``plan``: this data's
        tokens, when known); None: not supported. The core refuses a run predicted not to fit,
        unless forced (``ftctl train --force``)."""
        return None


# --- evaluator --------------------------------------------------------------------------------


class GenerationBackend(Protocol):
    """The evaluated model, loaded (an HF model + adapter, or a GGUF file through llama.cpp)."""

    def generate(self, conversations: list[list[dict]]) -> list[str]:
        """Greedy answers, one per conversation."""
        ...

    def reference_nll(self, examples: list[Example], references: list[str | None]) -> list[float | None]:
        """Mean token loss of each reference answer given its prompt (None: cannot score)."""
        ...


class Evaluator(Plugin):
    """Scores predictions one example at a time so comparisons can be paired."""

    kind = "evaluator"
    needs_reference: ClassVar[bool] = True  # skipped on examples without a reference answer
    higher_is_better: ClassVar[bool] = True
    needs_backend: ClassVar[bool] = False  # True: ``score`` gets the model as ``backend``
    pairwise: ClassVar[bool] = False  # True: compare calls ``judge_pair`` instead of ``score`` twice

    @abstractmethod
    def score(self, predictions: list[str], references: list[str | None], examples: list[Example],
              backend: GenerationBackend | None = None) -> list[float | None]:
        """One score per example (None: not applicable). ``backend`` is given when
        ``needs_backend`` is set; it loads the model on first use."""

    def judge_pair(self, preds_a: list[str], preds_b: list[str], references: list[str | None],
                   examples: list[Example]) -> list[tuple[float, float]]:
        """With ``pairwise = True``: per example (share of A, share of B), summing to 1."""
        raise NotImplementedError(f"{self.name} does not judge pairs (pairwise = False)")

    def breakdown(self, predictions: list[str], references: list[str | None],
                  examples: list[Example]) -> dict[str, list[float | None]]:
        """Optional sub-metrics, each one score per example like ``score`` and in the same good
        direction (``recall[deny]``): reported and compared in pairs as ``<name>/<sub>``."""
        return {}

    def details(self, predictions: list[str], references: list[str | None],
                examples: list[Example]) -> dict[str, Any] | None:
        """Optional corpus-level figures for the report, per side (a confusion matrix, per-label
        precision, what could not be scored); not tested in pairs."""
        return None


# --- exporter ---------------------------------------------------------------------------------


@dataclass
class ExportRequest:
    model: str  # the model (agent) name
    version: str
    base: BaseModelRef
    adapter_dir: Path
    out_dir: Path  # an empty temp dir; the core moves it to exports/<model>/<version>/
    merged: bool  # keep the merged HF directory
    quants: list[str]  # file types to write ([]: none)
    lora_gguf: bool  # also the adapter alone, as a llama.cpp LoRA
    workspace_cache: Path | None = None
    # held-out prompts of the version's task (its test split), each a chat up to the last user
    # turn: an exporter can verify its files where the model will be used
    task_prompts: list[list[dict[str, str]]] = field(default_factory=list)
    # the trainer's TrainResult.base_quantization (None: the adapter was trained on the base as stored)
    base_quantization: dict[str, Any] | None = None


@dataclass
class ExportedFile:
    path: Path  # inside ``request.out_dir``
    kind: str  # merged | gguf | lora-gguf | modelfile (deployers pick files by kind and quant)
    quant: str | None = None
    token_agreement: float | None = None  # verification against the merged model (1.0: identical)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded with the file in models.lock


@dataclass
class ExportResult:
    files: list[ExportedFile]
    checks: list[dict[str, Any]] = field(default_factory=list)  # verification details, shown to the user


@dataclass(frozen=True)
class ExportDefaults:
    """What a bare ``ftctl export`` writes (from the exporter's config)."""

    quants: tuple[str, ...] = ()
    merged: bool = False
    lora_gguf: bool = False


class Exporter(Plugin):
    kind = "exporter"

    @abstractmethod
    def export(self, request: ExportRequest) -> ExportResult:
        """Write the files into ``request.out_dir`` and verify them; raise if one is wrong."""

    @abstractmethod
    def outputs(self, request: ExportRequest) -> list[str]:
        """The names (in ``out_dir``) ``export`` would write: the core skips a version whose
        files exist already. Raise ``UsageError`` for a request this exporter cannot do."""

    def defaults(self) -> ExportDefaults:
        return ExportDefaults()

    def check(self, request: ExportRequest) -> list[str]:
        """Why ``request`` cannot be exported (cheap: before any work); [] when it can."""
        return []


# --- deployer ---------------------------------------------------------------------------------

Slot = Literal["stable", "canary"]  # where a version is served: for good, or beside it on trial


@dataclass(frozen=True)
class ExportQuery:
    """Which exported file a deployer serves."""

    kind: str = "gguf"
    quant: str | None = None  # None: the first of ``kind``


@dataclass(frozen=True)
class Artifact:
    """An exported file of one version, checked against its recorded sha256."""

    model: str
    version: str
    path: Path  # absolute
    rel: str  # as recorded in models.lock (relative to the workspace)
    sha256: str
    kind: str
    quant: str | None = None

    @property
    def label(self) -> str:
        """``model@version``: the id a server should answer with."""
        return f"{self.model}@{self.version}"


@dataclass(frozen=True)
class SlotInfo:
    """What a deployer runs in a slot, from its own configuration (no network)."""

    slot: Slot
    name: str  # the process / app / unit name
    model_path: str | None  # the file it serves, as configured
    resolved: Path | None  # the same, absolute (None: unknown)
    port: int | None = None
    args: tuple[str, ...] = ()  # its whole argument list, when the deployer configures one (pm2)


@dataclass(frozen=True)
class Health:
    healthy: bool
    served_id: str | None = None  # the model id the server reports, when it reports one


@dataclass(frozen=True)
class Traffic:
    """What one slot answered in a time window, as the deployer's router recorded it."""

    requests: int
    errors: int  # answers with a 5xx status (the server failed, not the client)
    p50_ms: float | None = None  # median request time

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "p50_ms": self.p50_ms}


@dataclass(frozen=True)
class AppStatus:
    """One row of ``ftctl status``: a slot, the version the lock knows its file as, its health."""

    name: str
    role: Slot
    version: str | None
    model_path: str | None
    sha256: str | None
    healthy: bool
    served_id: str | None
    port: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "version": self.version, "model_path": self.model_path,
                "sha256": self.sha256, "healthy": self.healthy, "served_id": self.served_id, "port": self.port}


@dataclass
class DeployPlan:
    """What ``ftctl deploy --dry-run`` shows."""

    diff: str = ""  # changes to configuration files, as a unified diff
    commands: list[list[str]] = field(default_factory=list)  # the commands it would run
    notes: list[str] = field(default_factory=list)


class Deployer(Plugin):
    """Serving primitives; canary, promote, rollback, auto-rollback and history are the core's.

    A slot is ``stable`` (serves for good) or ``canary`` (serves a candidate beside it). The core
    snapshots the deployer's state before each change and restores it if the command fails.
    """

    kind = "deployer"
    # Every version's exported file of the kind :meth:`serves` names, recorded in models.lock and
    # present in the workspace, oldest version first (sha256 as recorded). The core sets it when it
    # builds the deployer, so one that keeps several versions loaded at once (lora_swap: every
    # LoRA beside one base) knows them without reading models.lock itself.
    exported: tuple[Artifact, ...] = ()

    def serves(self) -> ExportQuery:
        """Which exported file to serve (default: the first GGUF)."""
        return ExportQuery()

    def check(self, slot: Slot, artifact: Artifact) -> None:
        """Refuse, before anything changes, what :meth:`serve` could not do: a configuration that
        does not load, an app that is not there, a port another process holds. Raise a
        ``UsageError``/``ConfigError`` naming the problem; the default checks nothing."""

    @abstractmethod
    def serve(self, slot: Slot, artifact: Artifact) -> None:
        """Make ``slot`` serve ``artifact`` (start or reload it) and wait until it is healthy.
        If it is not healthy in time, put the slot back as it was and raise ``RolledBack``."""

    @abstractmethod
    def stop(self, slot: Slot) -> None:
        """Stop the slot; stopping one that does not run is not an error."""

    @abstractmethod
    def slots(self) -> list[SlotInfo]:
        """The slots that exist now (stable first)."""

    @abstractmethod
    def health(self, slot: SlotInfo) -> Health:
        """One health request; never raises for an unreachable server."""

    @abstractmethod
    def snapshot(self) -> str:
        """The deployer's configuration as an opaque string (kept while a command runs). Raise a
        ``ConfigError`` when the configuration does not load: a broken one is never kept to be
        put back."""

    @abstractmethod
    def restore(self, snapshot: str) -> None:
        """Put the configuration of :meth:`snapshot` back and restart the stable slot if it changed.
        Raise ``ConfigError`` (and change nothing) when ``snapshot`` does not load."""

    def persist(self) -> None:
        """Make what runs now what comes back after a reboot (pm2: its saved process list). The
        core calls it after every change; the default has nothing to save."""

    def splits_traffic(self) -> bool:
        """True when :meth:`route` moves traffic: the core then hands every stable change over
        through the canary slot without downtime."""
        return False

    def route(self, canary_percent: int) -> None:
        """Send ``canary_percent`` of requests to the canary slot, the rest to stable.
        The default has no router: the canary runs but takes no share."""

    def traffic(self, since: float) -> dict[Slot, Traffic] | None:
        """Requests and server errors per slot since ``since`` (epoch seconds), from the router's
        own record (an access log): the canary's error-rate evidence. None: this deployer keeps no
        such record. Raise ``ExternalToolError`` when the record exists but cannot be read."""
        return None

    def preview(self, slot: Slot, artifact: Artifact) -> DeployPlan:
        """What :meth:`serve` would change, without changing it (``--dry-run``)."""
        return DeployPlan(notes=[f"{slot} would serve {artifact.rel}"])


# --- guard task -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardItem:
    """One question of a guard task and the answers that count as right."""

    messages: tuple[tuple[str, str], ...]  # (role, content) turns up to the last user turn
    accept: tuple[str, ...]  # any of these in the answer (case-insensitive, whole words) is right
    key: str = ""  # stable id (the report names the item by it)


class GuardTask(Plugin):
    """General ability outside the feedback: questions a fine-tuned version must still answer
    (capitals, currencies, ...). The eval runs them on both sides of a comparison; a drop
    beyond ``eval.guards_margin`` fails the gate (docs/eval.md)."""

    kind = "guard"

    @abstractmethod
    def items(self, limit: int) -> list[GuardItem]:
        """At most ``limit`` items, the same ones on every call (offline: no download)."""

    def score(self, answer: str, item: GuardItem) -> float:
        """1.0 when one of the accepted answers appears in ``answer`` as whole words."""
        import re

        text = answer.casefold()
        return float(any(re.search(r"(?<!\w)" + re.escape(a.casefold()) + r"(?!\w)", text) for a in item.accept))


KINDS: dict[str, type[Plugin]] = {
    "source": Source,
    "trainer": Trainer,
    "evaluator": Evaluator,
    "exporter": Exporter,
    "deployer": Deployer,
    "guard": GuardTask,
}
