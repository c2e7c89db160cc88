"""`ftctl cycle`."""

from __future__ import annotations

from pathlib import Path

import click

from ftctl.cli.main import pass_app


@click.command()
@click.option("--model", help="The model to run the loop for (default: default_model).")
@click.option("--force", is_flag=True, help="Train even with fewer than cycle.min_new_examples new examples.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Cap training steps (quick runs, demos).")
@click.option("--install-cron", is_flag=True, help="Add this workspace's cycle to the user's crontab and exit.")
@click.option("--crontab-file", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
@pass_app
def cycle(app, model, force, max_steps, install_cron, crontab_file):
    """Collect, train, gate, export (and deploy a canary): the whole loop, safe from cron.

    Exits 3 when there is too little new feedback, 4 when another run holds the lock,
    5 when the new version fails the evaluation gate.
    """
    if install_cron:
        from ftctl.cycle import install_cron as do_install

        result = do_install(app.workspace(), crontab_file)
        app.emit(result, lambda r: app.say(f"installed: {r['schedule']} {r['command']}"))
        return
    from ftctl.cycle import cycle as do_cycle

    result = app.mutate("cycle", lambda ws: do_cycle(ws, model, force=force, max_steps=max_steps, log=app.say))

    def render(r):
        exports = (r["steps"].get("export") or {}).get("files", [])
        app.say(f"[green]cycle done[/]: {r['model']}@{r['version']} from {r['new_examples']} new examples"
                + (f"; exported {', '.join(f['kind'] + (':' + f['quant'] if f.get('quant') else '') for f in exports)}"
                   if exports else "")
                + ("; deployed as canary" if "deploy" in r["steps"] else ""))

    app.emit(result, render)
