"""`ftctl doctor`."""

from __future__ import annotations

import click

from ftctl.cli.main import pass_app
from ftctl.errors import FAILURE, FtctlError


@click.command()
@pass_app
def doctor(app):
    """Check packages, CUDA, llama.cpp converters, pm2, nginx, the DVC remote and databases."""
    from ftctl.doctor import run_checks

    try:
        ws = app.workspace()
    except FtctlError:
        ws = None  # outside a workspace: check the machine only
    checks = run_checks(ws)

    def render(cs):
        for c in cs:
            mark = "[green]ok[/]  " if c["ok"] else ("[red]MISSING[/]" if c["required"] else "[yellow]note[/]")
            app.say(f"{mark} {c['name']}: {c['detail']}")
            if not c["ok"] and c["fix"]:
                app.say(f"        fix: {c['fix']}")

    app.emit(checks, render)
    if any(c["required"] and not c["ok"] for c in checks):
        raise click.exceptions.Exit(FAILURE)
