"""`ftctl drift`: a thin, read-only command over ftctl.data.drift."""

from __future__ import annotations

import click

from ftctl.cli.main import pass_app


@click.command()
@click.option("--model", help="The model (default: default_model in ftctl.yaml).")
@pass_app
def drift(app, model):
    """Prompt length, agent mix, novelty and ratings per served version: new feedback vs the training snapshot."""
    from ftctl.data.drift import drift as core

    app.emit(core(app.workspace(), model, log=app.say), lambda r: _render(app, r))


def _render(app, r: dict) -> None:
    from rich.table import Table

    ref, pl, ag, nov = r["reference"], r["prompt_length"], r["agents"], r["novelty"]
    app.say(f"[bold]{r['model']}[/]: {r['new']['rows']} new row(s) since {ref['since']} vs {ref['rows']} "
            f"in {ref['version']}'s snapshot")
    t = Table("signal", "reference", "new", "test", "drifted")
    mark = lambda x: "[red]yes[/]" if x else "no"  # noqa: E731
    t.add_row("prompt words (mean)", str(pl["reference"].get("mean", "-")), str(pl["new"].get("mean", "-")),
              f"KS p={pl['p_value']}", mark(pl["drifted"]))
    t.add_row("agent mix", ", ".join(f"{k} {v:.0%}" for k, v in ag["reference"].items()),
              ", ".join(f"{k} {v:.0%}" for k, v in ag["new"].items()), f"TVD {ag['tvd']}, p={ag['p_value']}",
              mark(ag["drifted"]))
    t.add_row(f"unseen {nov['ngram']}-grams", str(nov["baseline"]), str(nov["new"]), "vs reference halves",
              mark(nov["drifted"]))
    for v, x in r["ratings"].items():
        t.add_row(f"rating {v}", f"{x['before'].get('mean', '-')} (n {x['before']['n']})",
                  f"{x['after'].get('mean', '-')} (n {x['after']['n']})",
                  f"CI {x['ci']}" if x.get("ci") else "too few", mark(x["verdict"] == "worse"))
    app.console.print(t)
    if r["retrain"]:
        app.say("[yellow]the stable version is rated significantly lower: `ftctl cycle` retrains now[/]")
