"""`ftctl canary check`: a thin command over ftctl.deploy.canary."""

from __future__ import annotations

import click

from ftctl.cli.main import pass_app


@click.group()
def canary():
    """Judge a live canary on users' feedback and the servers' metrics."""


@canary.command()
@click.option("--model", help="The model (default: default_model in ftctl.yaml).")
@click.option("--dry-run", is_flag=True, help="Decide and show the evidence; change and record nothing.")
@pass_app
def check(app, model, dry_run):
    """Promote, step up, hold or roll back the canary, on evidence (recorded in models.lock)."""
    from ftctl.deploy import canary as core

    if dry_run:
        result = core.check(app.workspace(), model, dry_run=True, log=app.say)
    else:
        result = app.mutate("canary check", lambda ws: core.check(ws, model, log=app.say))
    app.emit(result, lambda r: _render(app, r))


def _render(app, r: dict) -> None:
    from rich.table import Table

    colour = {"promote": "green", "step": "green", "hold": "yellow", "rollback": "red"}[r["decision"]]
    app.say(f"[bold]{r['model']}[/]: canary {r['canary']['version']} at {r['canary']['percent']}% vs stable "
            f"{r['stable']}: [{colour}]{r['decision']}[/]" + ("" if r["applied"] else " (not applied)"))
    app.say(r["reason"])
    ev = r["evidence"]
    t = Table("", "stable", "canary", title=f"evidence since {ev['since'] or 'the start'} ({ev['signal']})")
    test = ev["test"] or {}
    t.add_row("rated answers", str(ev["rated"].get("stable", 0)), str(ev["rated"].get("canary", 0)))
    t.add_row("mean", f"{test['stable_mean']:.3f}" if test else "-", f"{test['canary_mean']:.3f}" if test else "-")
    lat = ev["latency"]
    t.add_row("ms/token", *(str(lat.get(k, {}).get("ms_per_token") or lat.get(k, {}).get("error") or "-")
                            for k in ("stable", "canary")))
    traffic = ev.get("traffic")
    if traffic and traffic["ok"]:
        t.add_row("requests (5xx)", *(f"{traffic[k]['requests']} ({traffic[k]['errors']})" if k in traffic else "-"
                                      for k in ("stable", "canary")))
    elif traffic:
        t.add_row("requests (5xx)", traffic["error"], "")
    app.console.print(t)
    if ev["served"]["unmatched"]:
        app.say(f"[yellow]unmatched served_model values:[/] {ev['served']['unmatched']}")
