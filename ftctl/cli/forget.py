"""`ftctl forget`: a thin shell over ftctl.forget.forget."""

from __future__ import annotations

import click

from ftctl.cli.main import pass_app


@click.command()
@click.option("--conversation", metavar="ID", help="A conversation id (or a row key source:id) to erase.")
@click.option("--value", metavar="VALUE", help="A value such as a member number: every conversation holding it (`-`: read it from stdin).")
@click.option("--model", help="Only this model (default: every model of the workspace).")
@click.option("--retrain", is_flag=True, help="Carry out the plan: rebuild the snapshot and train a new version.")
@click.option("--purge", is_flag=True, help="Rebuild the affected snapshots, then delete the old snapshots' objects "
                                            "that held it from the DVC cache and the DVC remote.")
@pass_app
def forget(app, conversation, value, model, retrain, purge):
    """Erase a conversation or a value from every future snapshot, and plan the rebuild.

    Finds every snapshot, version, export and deployment it reached (models.lock and the DVC
    cache), records keyed hashes (never the value) as tombstones that every later collect
    drops, flags the versions trained on it (deploy and rollback refuse them unless
    --allow-forgotten), writes a deletion record into models.lock's history, and prints the
    rebuild plan. --purge carries out the rebuild and removes the old objects from DVC."""
    from ftctl.forget import forget as run

    if value == "-":  # keeps the value out of shell history and the process list
        value = click.get_text_stream("stdin").readline().strip()
    # not app.mutate: its event log records argv, and argv may hold the value; forget() takes the lock
    result = run(app.workspace(), conversation=conversation, value=value, model=model, retrain=retrain,
                 purge=purge, log=app.say)

    def render(r):
        app.say(f"forgotten: {r['conversations']} conversation(s), {r['source_rows']} source row(s); "
                f"tombstones {', '.join(r['tombstones'])}")
        for m, x in r["reached"].items():
            app.say(f"[bold]{m}[/]: snapshot rows {x['snapshot_rows']}, versions {', '.join(x['versions']) or '-'}, "
                    f"exports {len(x['exports'])}, deployments {', '.join(x['deployments']) or '-'}")
        for m, steps in r["plan"].items():
            app.say(f"rebuild plan for {m}:" + "".join(f"\n  {s}" for s in steps))
        for m, x in r["purged"].items():
            app.say(f"purged {m}: {x['cache']} of {x['objects']} object(s) from the DVC cache"
                    + (f", {x['remote']} from remote {x['remote_name']}" if x["remote_name"] else ""))
        for m, x in r["retrained"].items():
            app.say(f"retrained {m}: snapshot {x['snapshot']} ({x['kept']} kept, {x['forgotten']} forgotten), "
                    f"version {x['version'] or '-'}")
        if r["rekeyed"]:
            app.say(f"{r['rekeyed']} older unsalted tombstone(s) re-keyed with the workspace secret")
        app.say(r["note"])

    app.emit(result, render)
