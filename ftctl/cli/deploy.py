"""deploy, promote, rollback, status: thin commands over ftctl.deploy.rollout."""

from __future__ import annotations

import shlex

import click

from ftctl.cli.main import pass_app

model_option = click.option("--model", help="The model (default: default_model in ftctl.yaml).")
allow_forgotten_option = click.option("--allow-forgotten", is_flag=True,
                                      help="Serve a version trained on data `ftctl forget` erased since (refused otherwise).")


def _render(app):
    def render(s: dict) -> None:
        from rich.table import Table

        if s.get("dry_run"):
            plan = s["dry_run"]  # plain echo: a diff must not be re-wrapped to the terminal width
            click.echo(plan["diff"].rstrip("\n") or "(the ecosystem file does not change)")
            for cmd in plan["commands"]:
                click.echo("would run: " + shlex.join(cmd))
            return
        canary = s["canary"]
        app.say(f"[bold]{s['model']}[/]: stable {s['stable'] or '-'}"
                + (f", canary {canary['version']} at {canary['percent']}%" if canary else ", no canary"))
        if b := s.get("baseline"):
            app.say(f"baseline (served before ftctl, {b['recorded'][:16]}): {b['path']}"
                    + (f", sha256 {b['sha256'][:12]}" if b.get("sha256") else ", not readable when recorded")
                    + f"; args: {shlex.join(b['args'])}")
        if s.get("interrupted"):
            app.say("[yellow]an interrupted deploy is pending: `ftctl rollback` restores the recorded state[/]")
        t = Table("app", "role", "version", "model file", "sha256", "healthy", "serves")
        for a in s["apps"]:
            t.add_row(a["name"], a["role"], a["version"] or "?", a["model_path"] or "-",
                      (a["sha256"] or "-")[:12], "yes" if a["healthy"] else "[red]no[/]", a["served_id"] or "-")
        app.console.print(t)
        if s["history"]:
            last = s["history"][-10:]
            why = any(e.get("detail") for e in last)  # canary checks say why they decided
            h = Table("time", "user", "action", "version", "stable", "canary", "result", *(["why"] if why else []),
                      title="history (last 10)")
            for e in last:
                c = e.get("canary")
                h.add_row(e["time"], e.get("user", "?"), e["action"], e.get("version") or "-",
                          e.get("stable") or "-", f"{c['version']} {c['percent']}%" if c else "-", e["result"],
                          *([e.get("detail") or ""] if why else []))
            app.console.print(h)
        if "cycle" in s:
            _render_cycle(app, s["cycle"])

    return render


@click.command()
@click.argument("ref")
@click.option("--canary", type=click.IntRange(1, 100), metavar="PERCENT",
              help="Start (or re-split) a canary taking this share of traffic.")
@click.option("--dry-run", is_flag=True, help="Print the ecosystem diff and pm2 commands; change nothing.")
@click.option("--gate/--no-gate", default=None, help="Apply the eval gate first (default: deploy.gate).")
@allow_forgotten_option
@pass_app
def deploy(app, ref, canary, dry_run, gate, allow_forgotten):
    """Deploy version REF (v1.1, latest, model@v1.1) to its pm2 app, or as a canary."""
    from ftctl.verbs import deploy as gated_deploy

    if dry_run:
        result = gated_deploy(app.workspace(), ref, canary=canary, dry_run=True, allow_forgotten=allow_forgotten,
                              log=app.say)
    else:
        result = app.mutate("deploy", lambda ws: gated_deploy(ws, ref, canary=canary, gate=gate,
                                                              allow_forgotten=allow_forgotten, log=app.say))
    app.emit(result, _render(app))


@click.command()
@model_option
@allow_forgotten_option
@pass_app
def promote(app, model, allow_forgotten):
    """Make the canary the stable version and remove the canary."""
    from ftctl.deploy import rollout as core

    app.emit(app.mutate("promote", lambda ws: core.promote(ws, model, allow_forgotten=allow_forgotten, log=app.say)),
             _render(app))


@click.command()
@click.option("--to", "to", metavar="VERSION", help="Redeploy this version instead of the previous one.")
@model_option
@allow_forgotten_option
@pass_app
def rollback(app, to, model, allow_forgotten):
    """Send all traffic back to stable (removing the canary), or redeploy the previous version."""
    from ftctl.deploy import rollout as core

    app.emit(app.mutate("rollback", lambda ws: core.rollback(ws, model, to, allow_forgotten=allow_forgotten,
                                                             log=app.say)), _render(app))


@click.command()
@model_option
@click.option("--all", "all_models", is_flag=True, help="Every model in `models:`, one after another.")
@pass_app
def status(app, model, all_models):
    """What each app serves (version, file, sha256), its health, the split, the history and the
    model's last `cycle` (with --all: for every model)."""
    from ftctl.cycle import last_outcomes
    from ftctl.deploy import rollout as core
    from ftctl.errors import FtctlError

    ws = app.workspace()
    cycles = last_outcomes(ws)
    if not all_models:
        s = core.status(ws, model, log=app.say)
        s["cycle"] = cycles.get(s["model"])
        app.emit(s, _render(app))
        return
    out = {}
    for name in ws.config.model_names():
        try:  # one model's unreachable deployer must not hide the others
            out[name] = core.status(ws, name, log=app.say)
        except FtctlError as e:
            out[name] = {"model": name, "error": e.message, "hint": e.hint}
        out[name]["cycle"] = cycles.get(name)

    def render(all_status):
        for s in all_status.values():
            if "error" in s:
                app.say(f"[bold]{s['model']}[/]: [red]{s['error']}[/]")
                _render_cycle(app, s.get("cycle"))
            else:
                _render(app)(s)
    app.emit({"models": out}, lambda r: render(r["models"]))


def _render_cycle(app, c: dict | None) -> None:
    if not c:
        app.say("last cycle: never")
        return
    what = {0: "[green]ok[/]", 3: "nothing to do"}.get(c.get("exit_code"), f"[red]failed ({c.get('exit_code')})[/]")
    app.say(f"last cycle: {c.get('time')} {what}" + (f", made {c['version']}" if c.get("version") else "")
            + (f": {c['error']}" if c.get("error") else ""))
