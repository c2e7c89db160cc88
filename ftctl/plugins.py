"""The plugin manager: built-ins and third-party plugins load the same way.

Every plugin (ours included) is a module named by an entry point in the ``ftctl`` group; the
built-ins are declared in our own pyproject.toml like any third-party package would.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pluggy

from ftctl import hookspecs
from collections.abc import Callable

from ftctl.errors import ConfigError, FtctlError
from ftctl.kinds import KINDS, Context, Plugin
from ftctl.records import Example

GROUP = "ftctl"
_HOOKS = {
    "source": "register_sources",
    "trainer": "register_trainers",
    "evaluator": "register_evaluators",
    "exporter": "register_exporters",
    "deployer": "register_deployers",
    "guard": "register_guard_tasks",
}


@dataclass(frozen=True)
class Registered:
    kind: str
    name: str
    cls: type[Plugin]
    distribution: str


@functools.cache
def manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(GROUP)
    return pm


def _distribution_of(pm: pluggy.PluginManager, module) -> str:
    for plugin, dist in pm.list_plugin_distinfo():
        if plugin is module:
            return dist.metadata["name"]
    return "?"


@functools.cache
def registry() -> dict[tuple[str, str], Registered]:
    """Every plugin class by (kind, name). A duplicate name is a configuration error."""
    pm = manager()
    found: dict[tuple[str, str], Registered] = {}
    for kind, hook_name in _HOOKS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            classes: list[type[Plugin]] = []
            impl.function(classes.append)
            for cls in classes:
                if not (isinstance(cls, type) and issubclass(cls, KINDS[kind])):
                    raise ConfigError(f"plugin {cls!r} registered as a {kind} but is not one",
                                      hint=f"subclass ftctl.api.{KINDS[kind].__name__}")
                missing = sorted(cls.__abstractmethods__)  # ABCs: what the class leaves abstract
                if missing:
                    raise ConfigError(f"{kind} plugin {cls.name!r} does not implement {', '.join(missing)}",
                                      hint=f"from {_distribution_of(pm, impl.plugin)}; see docs/plugins.md")
                key = (kind, cls.name)
                if key in found:
                    raise ConfigError(
                        f"two {kind} plugins are named {cls.name!r}",
                        hint=f"from {found[key].distribution} and {_distribution_of(pm, impl.plugin)}",
                    )
                found[key] = Registered(kind, cls.name, cls, _distribution_of(pm, impl.plugin))
    return found


def get(kind: str, name: str) -> type[Plugin]:
    try:
        return registry()[(kind, name)].cls
    except KeyError:
        names = sorted(n for k, n in registry() if k == kind)
        raise ConfigError(
            f"no {kind} plugin named {name!r}",
            hint=f"available: {', '.join(names) or 'none'} (see `ftctl plugins`)",
        ) from None


def build(kind: str, name: str, raw_config: dict, ctx: Context, *, key: str) -> Plugin:
    """Instantiate a plugin with its validated config; ``key`` names the config location."""
    from ftctl.config import check_set, validate_model

    cls = get(kind, name)
    check_set(raw_config)  # a ${VAR} of this section that is not set: said now, by its key
    return cls(validate_model(cls.Config, raw_config, key), ctx)


def required_settings(kind: str, name: str) -> list[str]:
    """The settings a plugin cannot do without (its Config fields with no default)."""
    return [k for k, f in get(kind, name).Config.model_fields.items() if f.is_required()]


def rewarder() -> Callable[[Example], tuple[float | None, str | None]]:
    """``reward(example) -> (reward, plugin)`` through the ``reward`` hooks in pluggy's order,
    called one by one so an error or a value out of -1..+1 names the plugin that gave it."""
    pm = manager()
    # in the order pluggy calls them: get_hookimpls lists the last-called first
    impls = [(impl.function, _who(pm, impl)) for impl in reversed(pm.hook.reward.get_hookimpls())]

    def reward(ex: Example) -> tuple[float | None, str | None]:
        for func, who in impls:
            try:
                value = func(example=ex)
            except Exception as e:  # noqa: BLE001 - any plugin bug: stop, and say whose
                raise FtctlError(f"the reward hook of plugin {who} failed on {ex.source} {ex.source_id or ex.key}: "
                                 f"{type(e).__name__}: {e}", hint="fix or uninstall that plugin; nothing was "
                                 "recorded") from e
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
                raise FtctlError(f"the reward hook of plugin {who} returned {value!r} for {ex.source} "
                                 f"{ex.source_id or ex.key}: a reward is a number in -1..+1",
                                 hint="fix or uninstall that plugin; nothing was recorded")
            return float(value), who
        return None, None

    if all(getattr(func, "reads_feedback_type_only", False) for func, _ in impls):
        return _per_feedback_type(reward)
    return reward


def _per_feedback_type(reward: Callable[[Example], tuple[float | None, str | None]]):
    """``reward`` asked once per feedback type: every hook says it reads nothing else (the
    built-in table), and collect asks for every row."""
    memo: dict[str | None, tuple[float | None, str | None]] = {}

    def cached(ex: Example) -> tuple[float | None, str | None]:
        kind = ex.feedback_type
        answer = memo.get(kind) if kind is None or kind.__class__ is str else None
        if answer is None:
            answer = reward(ex)
            if kind is None or kind.__class__ is str:
                memo[kind] = answer
        return answer

    return cached


def _who(pm: pluggy.PluginManager, impl) -> str:
    """A hook's plugin as people know it: its name, and the distribution it came from."""
    dist = _distribution_of(pm, impl.plugin)
    return impl.plugin_name if dist == "?" else f"{impl.plugin_name} ({dist})"


def register_commands(cli) -> None:
    manager().hook.register_commands(cli=cli)
