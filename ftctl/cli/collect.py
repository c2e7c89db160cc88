"""`ftctl collect`: a thin shell over ftctl.data.collect.collect."""

from __future__ import annotations

import click

from ftctl.cli.main import pass_app


@click.command()
@click.option("--model", help="The model (default: default_model in ftctl.yaml).")
@click.option("--dry-run", is_flag=True, help="Print the data card; write nothing.")
@click.option("--since", metavar="WHEN", help="Read rows newer than this date/time instead of the "
              "stored watermarks; `all` rebuilds the snapshot from scratch.")
@click.option("--strict", is_flag=True, help="Fail (and write nothing) if any row is rejected.")
@pass_app
def collect(app, model, dry_run, since, strict):
    """Collect feedback from the sources into a curated, versioned dataset snapshot."""
    from ftctl.data.collect import collect as run

    def go(ws):
        return run(ws, model, dry_run=dry_run, since=since, strict=strict, log=app.say)

    result = go(app.workspace()) if dry_run else app.mutate("collect", go)
    app.emit(result, lambda r: _render(app, r))


def _render(app, r) -> None:
    from rich.table import Table

    card = r["card"]
    t = Table("rows", "count", title=f"collect {r['model']}" + (" (dry run)" if not r["snapshot"] else ""))
    t.add_row("read", str(r["read"]))
    t.add_row("kept", str(r["kept"]))
    for group in ("filtered", "rejected", "scrubbed"):
        for k, v in r[group].items():
            t.add_row(f"{group}: {k}", str(v))
    for k, v in r["splits"].items():
        t.add_row(f"split: {k}", str(v))
    t.add_row("preference pairs", str(r["preferences"]))
    t.add_row("unpaired disliked answers", str(r["unpaired"]))
    app.console.print(t)
    app.say("tokens (" + card["tokens"]["counted_with"] + "): "
            + ", ".join(f"{k}: {v}" for k, v in card["tokens"]["histogram"].items() if v))
    app.say("ratings: " + ", ".join(f"{k}: {v}" for k, v in card["ratings"].items()))
    app.say("agents: " + ", ".join(f"{k}: {v}" for k, v in card["agents"].items()))
    check = card.get("scrub_check")
    if check:  # what scrubbing did to the answers (findings were shown above, with examples)
        changed = ", ".join(f"<{t}> {x['changed']} ({x['share']:.1%})" for t, x in check["by_type"].items())
        accepted = [f["type"] for f in check["findings"] if f["accepted"]]
        app.say(f"scrub check: of {check['answers']} assistant answers scrubbed, changed by "
                f"{changed or 'nothing'}; {check['rows_rejected']} row(s) left as placeholders only, rejected"
                + (f"; heavy but accepted: {', '.join(accepted)}" if accepted else ""))
    if r["snapshot"]:
        app.say(f"snapshot: {r['snapshot']} (rejects: {r['rejects_file']})")
