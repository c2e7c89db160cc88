"""The public plugin API: everything a plugin (built-in or third-party) may import from ftctl.

Plugins import from here only; the modules behind it are the core's and may move.
docs/plugins.md describes the contract with a complete example.
"""

from ftctl.errors import (ConfigError, ExternalToolError, FtctlError, RolledBack, UsageError)
from ftctl.hookspecs import hookimpl
from ftctl.kinds import (KINDS, AppStatus, Artifact, BaseModelRef, Context, Deployer, DeployPlan,
                         Evaluator, ExportDefaults, ExportedFile, Exporter, ExportQuery, ExportRequest,
                         ExportResult, GenerationBackend, Health, Plugin, PluginConfig, Slot, SlotInfo,
                         Source, Trainer, TrainPreview, TrainRequest, TrainResult, Traffic)
from ftctl.records import ROLES, Example, Reject, RowError, read_jsonl
from ftctl.lib.atomic import write_text
from ftctl.lib.digest import file_sha256
from ftctl.lib.process import wait_for
from ftctl.lib.times import parse_time
from ftctl.lib.scrub import phi_spans

__all__ = [
    "AppStatus", "Artifact", "BaseModelRef", "ConfigError", "Context", "DeployPlan", "Deployer",
    "Evaluator", "Example", "ExportDefaults", "ExportQuery", "ExportRequest", "ExportResult",
    "ExportedFile", "Exporter", "ExternalToolError", "FtctlError", "GenerationBackend", "Health", "KINDS",
    "Plugin", "PluginConfig", "ROLES", "Reject", "RolledBack", "RowError", "Slot", "SlotInfo", "Source", "TrainPreview",
    "Traffic", "TrainRequest", "TrainResult", "Trainer", "UsageError", "hookimpl", "parse_time", "read_jsonl",
    "write_text", "phi_spans", "file_sha256", "wait_for",
]
