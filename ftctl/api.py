"""The public plugin API: everything a plugin (built-in or third-party) may import from ftctl.

Plugins import from here only; the modules behind it are the core's and may move.
"""

from ftctl.errors import (ConfigError, ExternalToolError, FtctlError, UsageError)
from ftctl.hookspecs import hookimpl
from ftctl.kinds import (KINDS, Context, Deployer, Evaluator, Exporter, Plugin, PluginConfig,
                         Source, Trainer)
from ftctl.records import Example, Reject

__all__ = [
    "ConfigError", "Context", "Deployer", "Evaluator", "Example", "Exporter", "ExternalToolError",
    "FtctlError", "KINDS", "Plugin", "PluginConfig", "Reject", "Source", "Trainer", "UsageError",
    "hookimpl",
]
