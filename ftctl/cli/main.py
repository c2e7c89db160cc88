"""The ftctl command line: a thin shell over the core.

Each command parses, calls one core function, and renders its result (a rich table for
people, JSON with --json). Commands live in ``ftctl.cli.*`` and load only when invoked,
so ``ftctl --help`` imports neither torch nor any verb's dependencies.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ftctl import __version__
from ftctl.errors import FAILURE, OK, FtctlError, NothingToDo

# name -> "module:attribute" (and the one-line help shown without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("ftctl.cli.workspace:init", "Make a directory an ftctl workspace."),
    "config": ("ftctl.cli.workspace:config", "Show or validate the resolved ftctl.yaml."),
    "plugins": ("ftctl.cli.workspace:plugins", "List loaded plugins and their config schemas."),
    "doctor": ("ftctl.cli.doctor:doctor", "Check the environment and say how to fix what is missing."),
    "versions": ("ftctl.cli.history:versions", "List every version of a model."),
    "show": ("ftctl.cli.history:show", "Show one version's models.lock entry."),
    "card": ("ftctl.cli.history:card", "Print a version's model card (Hugging Face README.md)."),
    "diff": ("ftctl.cli.history:diff", "Compare two versions: data, params, metrics, base."),
    "log": ("ftctl.cli.history:log", "The history of versions, evaluations and deployments."),
    "checkout": ("ftctl.cli.history:checkout", "Restore a version's dataset and adapter files."),
    "push": ("ftctl.cli.history:push", "Push stored artifacts to the DVC remote."),
    "collect": ("ftctl.cli.collect:collect", "Collect feedback into a curated dataset snapshot."),
    "forget": ("ftctl.cli.forget:forget", "Erase a conversation or value from every future snapshot."),
    "train": ("ftctl.cli.train:train", "Fine-tune a LoRA/QLoRA adapter into a new version."),
    "eval": ("ftctl.cli.evaluate:eval_", "Evaluate a version, or compare two."),
    "chat": ("ftctl.cli.evaluate:chat", "Chat with a version in the terminal."),
    "export": ("ftctl.cli.export:export", "Merge, convert to GGUF, quantize and verify."),
    "deploy": ("ftctl.cli.deploy:deploy", "Deploy a version (optionally as a canary)."),
    "promote": ("ftctl.cli.deploy:promote", "Make the canary the stable version."),
    "rollback": ("ftctl.cli.deploy:rollback", "Go back to the last good version."),
    "status": ("ftctl.cli.deploy:status", "What each app serves, its health and the traffic split."),
    "cycle": ("ftctl.cli.cycle:cycle", "The whole loop, safe to run from cron."),
    "canary": ("ftctl.cli.canary:canary", "Judge a live canary on feedback: promote, step, hold or roll back."),
    "drift": ("ftctl.cli.drift:drift", "Compare new feedback with the training snapshot."),
    "serve": ("ftctl.cli.serve:serve", "Serve the HTTP API, /metrics and the dashboard."),
}


@dataclass
class App:
    """Global options, shared by every command through click's context object."""

    workspace_dir: Path | None = None
    json: bool = False
    debug: bool = False
    overrides: tuple[str, ...] = ()
    wait: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def workspace(self):
        from ftctl.registry.workspace import Workspace

        return Workspace.find(self.workspace_dir, self.overrides)

    @property
    def console(self):
        from rich.console import Console

        # with --json, stdout carries only JSON: human lines go to stderr
        return Console(stderr=self.json, highlight=False)

    def say(self, text: str) -> None:
        self.console.print(text)

    def emit(self, data: Any, render: Callable[[Any], None] | None = None) -> None:
        """--json: one JSON document on stdout; otherwise ``render`` (or a pretty dump)."""
        if self.json:
            click.echo(json.dumps(data, indent=2, default=_jsonable, ensure_ascii=False))
        elif render:
            render(data)
        else:
            self.console.print_json(json.dumps(data, default=str))

    def mutate(self, command: str, func: Callable[[], Any]) -> Any:
        """Run a mutating command under the workspace run lock, and log it."""
        ws = self.workspace()
        code = FAILURE
        try:
            with ws.run_lock(command, self.wait):
                result = func(ws)
                code = OK
                return result
        except FtctlError as e:
            code = e.exit_code
            raise
        finally:
            for w in getattr(ws, "warnings", []):
                self.console.print(f"[yellow]warning:[/] {w}")
            # "nothing to do" (a quiet night for cron's cycle) is a success, not a failure
            ws.log_event({"command": command, "argv": sys.argv[1:], "ok": code in (OK, NothingToDo.exit_code),
                          "exit_code": code, "seconds": round(time.monotonic() - self.started, 3)})


pass_app = click.make_pass_decorator(App)


def _jsonable(value: Any) -> Any:
    """Typed values in a result (models.lock entries are pydantic models) as their JSON form."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else str(value)


def _late_json(ctx, _param, value) -> None:
    if value:
        ctx.find_object(App).json = True


def accept_json(cmd: click.Command) -> click.Command:
    """``--json`` after the command too (``ftctl versions --json``), for every command and subcommand."""
    if not any(p.name == "json_late" for p in cmd.params):
        cmd.params.append(click.Option(["--json", "json_late"], is_flag=True, expose_value=False, is_eager=True,
                                       callback=_late_json, help="Print one JSON document for scripts."))
    for sub in getattr(cmd, "commands", {}).values():
        accept_json(sub)
    return cmd


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(COMMANDS) | set(PLUGIN_HELP) | set(super().list_commands(ctx)))

    def get_command(self, ctx, name):
        if name in COMMANDS:
            module, _, attr = COMMANDS[name][0].partition(":")
            return accept_json(getattr(importlib.import_module(module), attr))
        cmd = super().get_command(ctx, name)
        return accept_json(cmd) if cmd is not None else None

    def format_commands(self, ctx, formatter):
        # help text from the table above: listing commands must not import their modules
        rows = [(n, COMMANDS[n][1]) for n in sorted(COMMANDS)]
        rows += [(n, self.commands[n].get_short_help_str(60)) for n in sorted(self.commands) if n not in COMMANDS]
        rows += [(n, PLUGIN_HELP[n]) for n in sorted(PLUGIN_HELP) if n not in COMMANDS and n not in self.commands]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ftctl")
@click.option("-C", "--workspace", "workspace_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run in this workspace instead of the current directory.")
@click.option("--json", "json_", is_flag=True, help="Print one JSON document for scripts.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.lora.r=32 (repeatable).")
@click.option("--wait", type=float, default=0.0, metavar="SECONDS",
              help="Wait this long for another run's workspace lock.")
@click.pass_context
def cli(ctx, workspace_dir, json_, debug, overrides, wait):
    """ftctl: turn production chat feedback into better local LLMs, safely and repeatably.

    \b
    Exit codes: 0 ok, 1 failure, 2 usage or config error, 3 nothing to do,
    4 locked by another run, 5 evaluation gate failed, 6 deploy rolled back.
    """
    ctx.obj = App(workspace_dir, json_, debug, overrides, wait)


PLUGIN_HELP: dict[str, str] = {}  # verbs of third-party plugins -> short help, for the listing


def _plugin_dists() -> list[str]:
    """Installed distributions other than ftctl in the ``ftctl`` entry-point group, as
    "<dist-info dir>:<mtime>". Found with a glob, not importlib.metadata: importing that alone
    takes about as long as ``ftctl --help`` itself (~0.17 s)."""
    out = []
    for d in dict.fromkeys(p for p in sys.path if p and os.path.isdir(p)):
        for ep in glob.glob(os.path.join(glob.escape(d), "*.dist-info", "entry_points.txt")):
            info = os.path.dirname(ep)
            if os.path.basename(info).split("-")[0].lower() == "ftctl":
                continue
            with open(ep, encoding="utf-8", errors="replace") as f:
                if any(line.strip() == "[ftctl]" for line in f):
                    out.append(f"{info}:{os.stat(ep).st_mtime_ns}")
    return sorted(out)


def _commands_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ftctl" / "plugin-commands.json"


def _load_plugin_commands(listing_only: bool = False) -> None:
    """Third-party verbs. With none installed nothing is imported; for the command listing
    (``ftctl --help``) their names and help come from a cache kept per set of installed plugin
    distributions, so only running a plugin's verb (or a changed install) imports the plugins."""
    dists = _plugin_dists()
    if not dists:
        return
    cache = _commands_cache()
    if listing_only:
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("dists") == dists:
                PLUGIN_HELP.update(cached["commands"])
                return
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    from ftctl.plugins import register_commands

    before = set(cli.commands)
    register_commands(cli)
    added = {n: cli.commands[n].get_short_help_str(60) for n in cli.commands if n not in before}
    try:
        from ftctl.lib.atomic import write_text

        write_text(cache, json.dumps({"dists": dists, "commands": added}))
    except OSError:
        pass  # a read-only home: the listing just imports the plugins each time


def main(argv: list[str] | None = None) -> int:
    from ftctl.lib.process import polite_threads

    polite_threads()  # before torch or llama.cpp load in any command (train, eval, export, cycle)
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if not a.startswith("-")]
    if (words and words[0] not in COMMANDS) or not words:  # a plugin's verb, or the listing
        try:
            _load_plugin_commands(listing_only=not words)
        except FtctlError:
            pass  # a broken plugin must not break `ftctl --help`; `ftctl plugins` reports it
    debug = "--debug" in argv
    try:
        rv = cli.main(args=argv, prog_name="ftctl", standalone_mode=False)
        return rv if isinstance(rv, int) else 0  # click returns Exit codes here
    except FtctlError as e:
        if debug:
            import traceback

            traceback.print_exc()
        _print_error(e.message, e.hint, "--json" in argv, e.exit_code, getattr(e, "result", None))
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return FAILURE
    except click.ClickException as e:
        if "--json" in argv:  # a usage error is still one JSON document for a script
            hint = f"see `{e.ctx.command_path} --help`" if getattr(e, "ctx", None) else "see `ftctl --help`"
            _print_error(e.format_message(), hint, True, e.exit_code)
            return e.exit_code
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130


def _print_error(message: str, hint: str | None, as_json: bool, code: int, result: dict | None = None) -> None:
    if as_json:
        doc = {"error": message, "hint": hint, "exit_code": code}
        if result is not None:
            doc["result"] = result
        click.echo(json.dumps(doc, default=_jsonable))
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"  hint: {hint}", err=True)


def entry() -> None:
    sys.exit(main())
