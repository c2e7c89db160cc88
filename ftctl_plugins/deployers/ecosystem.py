"""pm2 ecosystem files (.config.js, .json, .yaml): read apps, rewrite one app's argument.

A rewrite keeps every other byte of the file. It replaces one occurrence of the old value in
the text, then loads the result with the format's own parser (``node`` for JavaScript) and
accepts it only if the loaded config equals the old one with exactly that argument changed.
This works the same for all three formats, keeps comments and layout untouched, and never
trusts a hand-written parser: the real one is the judge. (ruamel.yaml's round-trip could still
reflow YAML; a verified byte-level edit cannot.)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

from ftctl.api import ConfigError, UsageError, run_tool, write_text

JS_SUFFIXES = (".js", ".cjs")
YAML_SUFFIXES = (".yaml", ".yml")
# paths and values we write into args: no quotes, spaces, '$' or backslashes to escape
SAFE_VALUE_RE = re.compile(r"^[A-Za-z0-9_./@+:=-]+$")

# Loads each file named on the command line and prints them as one JSON list.
_NODE_LOAD = """
const path = require('path');
const out = [];
for (const f of process.argv.slice(1)) {
  try { let m = require(path.resolve(f)); if (m && m.__esModule && m.default) m = m.default;
        out.push({ok: m}); }
  catch (e) { out.push({error: String(e && e.message || e).split('\\n')[0]}); }
}
process.stdout.write(JSON.stringify(out));
"""


class EcosystemError(ConfigError):
    """The ecosystem file cannot be read or safely rewritten."""


def _kind(path: Path) -> str:
    name = path.name
    if name.endswith(JS_SUFFIXES):
        return "js"
    if name.endswith(".json"):
        return "json"
    if name.endswith(YAML_SUFFIXES):
        return "yaml"
    raise EcosystemError(f"{path.name}: unsupported ecosystem file type",
                         hint="use ecosystem.config.js, .json or .yaml")


def _parse_many(path: Path, texts: list[str]) -> list[Any]:
    """Parse each text as if it were ``path``. Returns the config, or an exception message."""
    kind = _kind(path)
    if kind == "json":
        return [_safe(json.loads, t) for t in texts]
    if kind == "yaml":
        from ruamel.yaml import YAML

        return [_safe(YAML(typ="safe", pure=True).load, t) for t in texts]
    # JavaScript: node evaluates sibling temp files (same dir: __dirname and require() still work)
    files = []
    try:
        for text in texts:
            # a unique name per call: threads of one process (ftctl serve) parse at the same time
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.ftctl-", suffix=path.suffix, dir=path.parent)
            files.append(Path(name))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        proc = run_tool(["node", "-e", _NODE_LOAD, *map(str, files)], cwd=path.parent, timeout=60,
                   hint="pm2 needs Node.js too: apt-get install nodejs")
        return [r["ok"] if "ok" in r else ValueError(r["error"]) for r in json.loads(proc.stdout)]
    finally:
        for f in files:
            f.unlink(missing_ok=True)


def _safe(fn, text):
    try:
        return fn(text)
    except Exception as e:  # any parser error becomes a value to report, not a crash
        return e


def _apps(path: Path, config: Any) -> list[dict]:
    if isinstance(config, Exception):
        first = str(config).strip().splitlines()[0] if str(config).strip() else type(config).__name__
        raise EcosystemError(f"{path.name} does not parse: {first}",
                             hint="fix the file (pm2 cannot load it either), or restore its backup")
    apps = config.get("apps") if isinstance(config, dict) else config
    if not isinstance(apps, list) or not all(isinstance(a, dict) for a in apps):
        raise EcosystemError(f"{path.name} has no `apps` list", hint="pm2 expects {apps: [{name, script, args}]}")
    return apps


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EcosystemError(f"ecosystem file {path} does not exist",
                             hint="set deploy.pm2.ecosystem in ftctl.yaml") from None


def load_apps(path: Path, text: str | None = None) -> list[dict]:
    path = Path(path)
    return _apps(path, _config(path, read_text(path) if text is None else text))


def _config(path: Path, text: str) -> Any:
    return copy.deepcopy(_parsed(path, text))


@functools.lru_cache(maxsize=32)
def _parsed(path: Path, text: str) -> Any:
    # one command reads the same file several times, and node takes ~0.1 s to start
    return _parse_many(path, [text])[0]


def find_app(apps: list[dict], name: str, path: Path) -> dict:
    for app in apps:
        if app.get("name") == name:
            return app
    names = ", ".join(str(a.get("name")) for a in apps) or "none"
    raise EcosystemError(f"no app named {name!r} in {Path(path).name}", hint=f"apps there: {names}")


# --- args: a list or one string, as pm2 allows -------------------------------------------


def arg_tokens(app: dict) -> list[str]:
    args = app.get("args") or []
    return shlex.split(args) if isinstance(args, str) else [str(a) for a in args]


def _positions(tokens: list[str], flags: list[str]) -> list[tuple[int, bool]]:
    """(index, inline) for each ``--flag value`` (inline False) or ``--flag=value`` (True)."""
    found = []
    for i, tok in enumerate(tokens):
        if tok in flags and i + 1 < len(tokens):
            found.append((i + 1, False))
        elif any(tok.startswith(f + "=") for f in flags):
            found.append((i, True))
    return found


def get_arg(app: dict, flags: list[str]) -> str | None:
    """The one value of ``flags`` in the app's args; None if absent; an error if repeated."""
    tokens = arg_tokens(app)
    pos = _positions(tokens, flags)
    if len(pos) > 1:
        raise EcosystemError(f"app {app.get('name')!r} passes {'/'.join(flags)} {len(pos)} times",
                             hint="keep one, so ftctl knows which one to rewrite")
    if not pos:
        return None
    i, inline = pos[0]
    return tokens[i].split("=", 1)[1] if inline else tokens[i]


def with_arg(tokens: list[str], flags: list[str], value: str) -> list[str]:
    """Tokens with the flag's value replaced (or the flag appended when absent)."""
    tokens = list(tokens)
    pos = _positions(tokens, flags)
    if not pos:
        return tokens + [flags[0], value]
    i, inline = pos[0]
    tokens[i] = f"{tokens[i].split('=', 1)[0]}={value}" if inline else value
    return tokens


def _normalised(config: Any) -> Any:
    """The config with every app's args as a token list (string args compare by meaning)."""
    config = copy.deepcopy(config)
    for app in (config.get("apps") if isinstance(config, dict) else config) or []:
        if isinstance(app, dict) and "args" in app:
            app["args"] = arg_tokens(app)
    return config


# --- the rewrite ----------------------------------------------------------------------------


def check_value(value: str) -> str:
    if not SAFE_VALUE_RE.match(value):
        raise UsageError(f"{value!r} cannot be written into pm2 args safely",
                         hint="paths may hold only letters, digits and _ . / @ + : = -")
    return value


def rewrite(path: Path, text: str, app_name: str, flags: list[str], new: str) -> str:
    """``text`` with app ``app_name``'s ``flags`` value set to ``new``; nothing else changes."""
    path = Path(path)
    check_value(new)
    config = _config(path, text)
    app = find_app(_apps(path, config), app_name, path)
    old = get_arg(app, flags)
    if old is None:
        raise EcosystemError(f"app {app_name!r} has no {'/'.join(flags)} argument in {path.name}",
                             hint=f"add `{flags[0]} <path>` to its args once, then deploy")
    if old == new:
        return text
    if sum(t == old or t.endswith("=" + old) for t in arg_tokens(app)) > 1:
        raise EcosystemError(f"the model path {old} occurs more than once in app {app_name!r}'s args",
                             hint="ftctl cannot tell which one to rewrite; keep it once")
    expected = copy.deepcopy(config)
    target = find_app(_apps(path, expected), app_name, path)
    target["args"] = with_arg(arg_tokens(target), flags, new)
    expected = _normalised(expected)
    starts = [m.start() for m in re.finditer(re.escape(old), text)]
    candidates = [text[:s] + new + text[s + len(old):] for s in starts]
    for candidate, parsed in zip(candidates, _parse_many(path, candidates) if candidates else []):
        if not isinstance(parsed, Exception) and _normalised(parsed) == expected:
            return candidate
    raise EcosystemError(f"cannot rewrite {old} in {path.name} safely: it is not written there literally",
                         hint=f"write app {app_name!r}'s {flags[0]} path as a plain string in the file")


def backup_and_write(path: Path, new_text: str, backup_dir: Path, stamp: str) -> Path:
    """Keep the current file in ``backup_dir``, then replace it atomically. Returns the backup."""
    path = Path(path)
    backup = Path(backup_dir) / f"{path.name}.{stamp}"
    write_text(backup, read_text(path))
    replace(path, new_text)
    return backup


def replace(path: Path, text: str) -> None:
    """Atomic write that keeps the file's permissions (the temp file starts as 0600)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else None
    write_text(path, text)
    if mode is not None:
        with contextlib.suppress(OSError):
            os.chmod(path, mode)


def unified_diff(path: Path, old: str, new: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        f"a/{Path(path).name}", f"b/{Path(path).name}"))
