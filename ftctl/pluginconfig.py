"""Validate every plugin section of ftctl.yaml against its plugin's own schema.

The core schema cannot know third-party plugin keys, so `config validate` (and every verb,
when it builds its plugin) checks them here with the plugin's ``Config``.
"""

from __future__ import annotations

from ftctl import plugins
from ftctl.config import FtctlConfig, validate_model

# section -> (plugin kind, the key naming the plugin in use)
_SECTION_KINDS = {"train": ("trainer", "trainer"), "export": ("exporter", "exporter"),
                  "deploy": ("deployer", "deployer")}


def validate_all(config: FtctlConfig) -> list[str]:
    """Returns the dotted keys checked; raises ConfigError naming the first bad one."""
    checked = []
    for name in config.model_names():
        m = config.model(name)
        where = f"models.{name}"
        for i, src in enumerate(m.sources):
            cls = plugins.get("source", src.kind)
            validate_model(cls.Config, src.plugin_config(), f"{where}.sources[{i}]")
            checked.append(f"{where}.sources[{i}]")
        for section, (kind, selector) in _SECTION_KINDS.items():
            sec = getattr(m, section)
            chosen = getattr(sec, selector)
            plugins.get(kind, chosen)
            for key, value in (sec.model_extra or {}).items():
                cls = plugins.get(kind, key)  # an unknown key here is an unknown plugin
                validate_model(cls.Config, value or {}, f"{where}.{section}.{key}")
                checked.append(f"{where}.{section}.{key}")
        for metric in m.eval.metrics:
            plugins.get("evaluator", metric)
        for key, value in (m.eval.model_extra or {}).items():
            cls = plugins.get("evaluator", key)
            validate_model(cls.Config, value or {}, f"{where}.eval.{key}")
            checked.append(f"{where}.eval.{key}")
    return checked


def not_set_up(config: FtctlConfig) -> list[str]:
    """The chosen plugins that have required settings but no section yet (the demo's deployer):
    valid until a command builds them, so `config validate` names them instead of failing."""
    out = []
    for name in config.model_names():
        m = config.model(name)
        for section, (kind, selector) in _SECTION_KINDS.items():
            sec = getattr(m, section)
            chosen = getattr(sec, selector)
            required = plugins.required_settings(kind, chosen)
            if required and not (sec.model_extra or {}).get(chosen):
                out.append(f"models.{name}.{section}.{chosen} (needs {', '.join(required)})")
    return out
