"""The public plugin API: everything a plugin (built-in or third-party) may import from ftctl.

Plugins import from here only (import-linter checks it, see pyproject.toml); the modules behind
it are the core's and may move. Two parts:

- the contract: the plugin kinds and the typed values they exchange (ftctl.kinds), the data
  shape (ftctl.records), the error family (ftctl.errors), the hook marker (ftctl.hookspecs);
- the toolkits (ftctl.lib): base models, the chat format, the step plan, llama.cpp, generation
  backends, statistics, processes, atomic files, digests, times, secret redaction, PHI spans.

Light on purpose: ``ftctl --help`` and ``ftctl plugins`` import every plugin, so nothing here
loads torch, transformers, peft or llama_cpp at import (the functions load them when called).
The statistics need numpy: they load on first use (``__getattr__`` below).
docs/plugins.md describes the contract with a complete example, and each toolkit.
"""

from ftctl.errors import ConfigError, ExternalToolError, FtctlError, RolledBack, UsageError
from ftctl.hookspecs import hookimpl
from ftctl.kinds import (KINDS, AppStatus, Artifact, BaseModelRef, Context, Deployer, DeployPlan, Evaluator,
                         ExportDefaults, ExportedFile, Exporter, ExportQuery, ExportRequest, ExportResult,
                         GenerationBackend, GuardItem, GuardTask, Health, Log, MemoryEstimate, Plugin, PluginConfig,
                         Slot, SlotInfo, Source, Trainer, TrainPlan, TrainPreview, TrainRequest, TrainResult, Traffic)
from ftctl.lib.atomic import read_json, write_text
from ftctl.lib.basemodel import (BaseModelError, base_dtype, dequantize, load_model, load_tokenizer, off_the_checkpoint,
                                 require_bitsandbytes,
                                 resolve_base)
from ftctl.lib.chat_format import (IGNORE, ChatFormatError, Collator, Encoded, EncodeReport, check_template,
                                   encode, ensure_pad, mark_trained, select)
from ftctl.lib.device import (DEVICE_HELP, Capability, Device, Gpu, check_spec as check_device, compute_dtype,
                              gpu_layers, load_dtype, probe as probe_devices, resolve as resolve_device, torch_dtype)
from ftctl.lib.digest import file_sha256
from ftctl.lib.generation import GenSettings, GGUFBackend, HFBackend, load_hf, prompt_messages
from ftctl.lib.llamacpp import find_tools, open_llama, preflight, user_cache_dir
from ftctl.lib.memory import (RunShape, checkpointed_layers, least_checkpointing, predict as predict_memory,
                              read_config)
from ftctl.lib.plan import describe, make_plan
from ftctl.lib import ports
from ftctl.lib.process import run_tool, wait_for
from ftctl.lib.redact import redact
from ftctl.lib.scrub import phi_spans
from ftctl.lib.times import now, parse_time
from ftctl.records import ROLES, Example, Reject, RowError, read_jsonl

# the statistics (ftctl.lib.stats) load numpy: imported on first use, not by every CLI start
_STATS = ("BETTER", "SAME", "WORSE", "FLAG", "holm", "needed_n", "paired_test", "two_proportions", "two_sample_test")


def __getattr__(name: str):
    if name in _STATS:
        from ftctl.lib import stats

        return getattr(stats, name)
    raise AttributeError(f"module 'ftctl.api' has no attribute {name!r}")


__all__ = [
    # the contract
    "AppStatus", "Artifact", "BaseModelRef", "ConfigError", "Context", "DeployPlan", "Deployer", "Evaluator",
    "Example", "ExportDefaults", "ExportQuery", "ExportRequest", "ExportResult", "ExportedFile", "Exporter",
    "ExternalToolError", "FtctlError", "GenerationBackend", "GuardItem", "GuardTask", "Health", "KINDS", "Log",
    "MemoryEstimate", "Plugin", "PluginConfig", "ROLES", "Reject", "RolledBack", "RowError", "Slot", "SlotInfo", "Source",
    "TrainPlan", "TrainPreview",
    "TrainRequest", "TrainResult", "Trainer", "Traffic", "UsageError", "hookimpl", "read_jsonl",
    # base models
    "BaseModelError", "base_dtype", "dequantize", "load_model", "load_tokenizer", "off_the_checkpoint",
    "require_bitsandbytes",
    "resolve_base",
    # devices and dtypes (decided from the config and the machine), memory you can plan
    "Capability", "DEVICE_HELP", "Device", "Gpu", "check_device", "compute_dtype", "gpu_layers", "load_dtype",
    "probe_devices", "resolve_device", "torch_dtype", "RunShape", "checkpointed_layers", "least_checkpointing",
    "predict_memory", "read_config",
    # the chat format
    "ChatFormatError", "Collator", "IGNORE", "EncodeReport", "Encoded", "check_template", "encode", "ensure_pad",
    "mark_trained", "select",
    # the step plan
    "describe", "make_plan",
    # llama.cpp and generation
    "GGUFBackend", "GenSettings", "HFBackend", "find_tools", "load_hf", "open_llama", "preflight", "prompt_messages",
    "user_cache_dir",
    # statistics
    *_STATS,
    # processes, ports, files, digests, times, secrets, PHI
    "file_sha256", "now", "parse_time", "phi_spans", "ports", "read_json", "redact", "run_tool", "wait_for",
    "write_text",
]
