"""The plugin contract. A plugin module implements any of these with ``@hookimpl``.

Each ``register_*`` hook receives a ``register`` callable; call it with a plugin *class* (a
subclass of the matching base in :mod:`ftctl.api`). The class carries its ``name`` and its
``Config`` (a pydantic model, validated from the plugin's section in ftctl.yaml), so
``ftctl plugins`` can list it with its schema before anything heavy is imported.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ftctl")
hookimpl = pluggy.HookimplMarker("ftctl")


@hookspec
def register_sources(register):
    """Register source classes (``ftctl.api.Source``): where interactions come from."""


@hookspec
def register_trainers(register):
    """Register trainer classes (``ftctl.api.Trainer``): base + data -> adapter."""


@hookspec
def register_evaluators(register):
    """Register evaluator classes (``ftctl.api.Evaluator``): per-example scores."""


@hookspec
def register_exporters(register):
    """Register exporter classes (``ftctl.api.Exporter``): adapter -> served files."""


@hookspec
def register_deployers(register):
    """Register deployer classes (``ftctl.api.Deployer``): files -> serving processes."""


@hookspec(firstresult=True)
def reward(example):
    """A reward in -1..+1 for a feedback row (an ``ftctl.api.Example``: its ``feedback_type``,
    ``rating``, ``correction``, ``meta``) that carries none, or None to leave it to the next
    plugin. The first answer wins; ftctl's built-in table (thumbs, edit, regenerate, copy, ...)
    answers last. Collect writes the reward into the row, where ``curate.min_reward``, canary
    check and reward-weighted training read it. A hook that raises stops the collect."""


@hookspec
def register_guard_tasks(register):
    """Register guard task classes (``ftctl.api.GuardTask``): general questions a version must still answer."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``ftctl`` group (``cli`` is the click group)."""
