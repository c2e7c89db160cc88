"""`ftctl cycle`."""

from __future__ import annotations

from pathlib import Path

import click

from ftctl.cli.main import pass_app


@click.command()
@click.option("--model", help="The model to run the loop for (default: default_model).")
@click.option("--all", "all_models", is_flag=True,
              help="Every model in `models:`, in turn under one lock (what cron runs); one model's failure "
                   "does not stop the others.")
@click.option("--force", is_flag=True, help="Train even when no trigger fires (too little new feedback).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Cap training steps (quick runs, demos).")
@click.option("--install-cron", is_flag=True, help="Add this workspace's `cycle --all` to the user's crontab and exit.")
@click.option("--crontab-file", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
@pass_app
def cycle(app, model, all_models, force, max_steps, install_cron, crontab_file):
    """Collect, train, gate, export (and deploy a canary): the whole loop, safe from cron.

    Exits 3 when there is too little new feedback, 4 when another run holds the lock,
    5 when the new version fails the evaluation gate. With --all: 0 when no model failed,
    3 when none had anything to do, a failure's code when all failures share it, else 1.
    """
    if install_cron:
        from ftctl.cycle import install_cron as do_install

        result = do_install(app.workspace(), crontab_file)
        app.emit(result, lambda r: app.say(f"installed: {r['schedule']} {r['command']}"))
        return
    if all_models and model:
        from ftctl.errors import UsageError

        raise UsageError("--all and --model exclude each other", hint="--all runs every model of ftctl.yaml")
    if all_models:
        from ftctl.cycle import cycle_all

        result = app.mutate("cycle", lambda ws: cycle_all(ws, force=force, max_steps=max_steps, log=app.say))
        app.emit(result, lambda r: _render_all(app, r))
        return
    from ftctl.cycle import cycle_model

    result = app.mutate("cycle", lambda ws: cycle_model(ws, model or ws.config.default_model, force=force,
                                                        max_steps=max_steps, log=app.say))
    app.emit(result, lambda r: _render(app, r))


def _render(app, r):
    exports = (r["steps"].get("export") or {}).get("files", [])
    app.say(f"[green]cycle done[/]: {r['model']}@{r['version']} from {r['new_examples']} new examples"
            + (f"; exported {', '.join(f['kind'] + (':' + f['quant'] if f.get('quant') else '') for f in exports)}"
               if exports else "")
            + ("; deployed as canary" if "deploy" in r["steps"] else ""))


def _render_all(app, r):
    for name, o in r["models"].items():
        if o["exit_code"] == 0:
            _render(app, o["result"])
        else:
            app.say(f"{name}: {o['error']}")
