"""Validate a YAML file of custom Presidio recognizers before Presidio reads it.

Presidio's ``RecognizerRegistry.add_recognizers_from_yaml`` reports a bad file as a KeyError or a
regex traceback from deep inside, or not at all (a regex that never matches). A site's file of
identifier formats is configuration, so its mistakes are config errors naming the entry and key
(``recognizers[1].patterns[0].regex``). Regexes are compiled with the same engine and flags
Presidio uses (the ``regex`` module, IGNORECASE | MULTILINE | DOTALL).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ftctl.errors import ConfigError
from ftctl.lib.digest import file_sha256

PRESIDIO_FLAGS = 26  # re.IGNORECASE | re.MULTILINE | re.DOTALL, Presidio's global_regex_flags
_ENTITY_RE = re.compile(r"^[A-Z][A-Z0-9_]{1,40}$")
_KEYS = {"name", "supported_language", "supported_entity", "patterns", "context", "deny_list",
         "deny_list_score", "supported_languages"}


def entities_in(path: Path, where: str) -> list[str]:
    """Validate ``path``; returns the entity types it defines. ``where`` names the config key."""
    import regex
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    def fail(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: {path.name}: {key}: {msg}",
                           hint="see ftctl/lib/recognizers/site.example.yaml for the format")

    try:
        data = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror}", hint="fix the path (relative to the workspace)") from None
    except YAMLError as e:
        raise fail("(file)", f"not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("recognizers"), list) or not data["recognizers"]:
        raise fail("recognizers", "expected a non-empty list under `recognizers:`")
    entities, names = [], set()
    for i, rec in enumerate(data["recognizers"]):
        key = f"recognizers[{i}]"
        if not isinstance(rec, dict):
            raise fail(key, "expected a mapping")
        unknown = sorted(set(rec) - _KEYS)
        if unknown:
            raise fail(f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_KEYS))})")
        name = rec.get("name")
        if not isinstance(name, str) or not name.strip():
            raise fail(f"{key}.name", "missing (a unique name)")
        if name in names:
            raise fail(f"{key}.name", f"duplicate name {name!r}")
        names.add(name)
        entity = rec.get("supported_entity")
        if not isinstance(entity, str) or not _ENTITY_RE.match(entity):
            raise fail(f"{key}.supported_entity", f"{entity!r} is not an UPPER_CASE type name")
        if rec.get("supported_language", "en") != "en":
            raise fail(f"{key}.supported_language", "only en is scrubbed")
        patterns, deny = rec.get("patterns"), rec.get("deny_list")
        if not patterns and not deny:
            raise fail(f"{key}.patterns", "missing (a list of {name, regex, score}, or a deny_list)")
        for j, p in enumerate(patterns or []):
            pk = f"{key}.patterns[{j}]"
            if not isinstance(p, dict) or not isinstance(p.get("regex"), str) or not p["regex"]:
                raise fail(f"{pk}.regex", "missing")
            try:
                compiled = regex.compile(p["regex"], flags=PRESIDIO_FLAGS)
            except regex.error as e:
                raise fail(f"{pk}.regex", f"bad regex ({e})") from None
            if compiled.search(""):
                raise fail(f"{pk}.regex", "matches the empty string (would match everywhere)")
            score = p.get("score")
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 < score <= 1:
                raise fail(f"{pk}.score", f"{score!r} is not a number in (0, 1]")
            if not isinstance(p.get("name"), str):
                raise fail(f"{pk}.name", "missing")
        if deny is not None and (not isinstance(deny, list) or not all(isinstance(x, str) and x for x in deny)):
            raise fail(f"{key}.deny_list", "expected a list of strings")
        ctx = rec.get("context")
        if ctx is not None and (not isinstance(ctx, list) or not all(isinstance(x, str) for x in ctx)):
            raise fail(f"{key}.context", "expected a list of words")
        entities.append(entity)
    return entities


def describe(path: Path | None, root: Path | None = None) -> dict[str, Any] | None:
    if path is None:
        return None
    shown = path.relative_to(root).as_posix() if root and path.is_relative_to(root) else str(path)
    return {"path": shown, "sha256": file_sha256(path)}
