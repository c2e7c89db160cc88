"""Git-like commands over the registry: versions, show, diff, log, checkout, push."""

from __future__ import annotations

import click

from ftctl.cli.main import pass_app

model_option = click.option("--model", help="The model (default: default_model in ftctl.yaml).")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))


def _parity(p: dict | None, long: bool = False) -> str:
    """A GGUF's parity with the merged model, and the base's figures for the same type."""
    if not p:
        return ""
    b = p.get("base") or {}
    if long:
        return (f"top-1 agreement {p['top1']:.1%}, mean KL {p['kl_mean']:.4f} over {p.get('positions')} positions"
                + (f"; the base's: {b['top1']:.1%}, {b['kl_mean']:.4f}" if b else ""))
    return f" {p['top1']:.1%}/{p['kl_mean']:.3f}" + (f" (base {b['top1']:.1%}/{b['kl_mean']:.3f})" if b else "")


def _export_cell(exports: list[dict]) -> str:
    return "\n".join((x["quant"] or x["kind"]) + _parity(x.get("parity")) for x in exports
                     if x["kind"] != "modelfile") or "-"


@click.command()
@model_option
@pass_app
def versions(app, model):
    """List every version: parent, created, rows, key metric, exports, where deployed."""
    from ftctl.registry.lineage import version_rows

    ws = app.workspace()
    rows = version_rows(ws, model)

    def render(rs):
        from rich.table import Table

        if not rs:
            app.say("no versions yet: run `ftctl collect` and `ftctl train`")
            return
        key = ws.config.model(model).eval.gate.metric
        t = Table("model", "version", "parent", "created", "rows", key, "exports", "deployed")
        for r in rs:
            rows_n = sum(v for v in r["rows"].values() if isinstance(v, int)) if r["rows"] else None
            parent = r["parent"] or ("-" if r["version"] == "baseline" else "base")
            t.add_row(r["model"], r["version"] + (" [red](forgotten)[/]" if r.get("forgotten") else ""),
                      parent, r["created"][:16], _fmt(rows_n),
                      _fmt(r["metrics"].get(key)), _export_cell(r["exports"]), r["deployed"] or "-")
        app.console.print(t)
        if any(r.get("forgotten") for r in rs):
            app.say("(forgotten): trained on data `ftctl forget` erased since; deploy and rollback refuse it "
                    "unless --allow-forgotten")
        if any(r["version"] == "baseline" for r in rs):
            app.say("baseline: what the app served before ftctl's first deploy (`ftctl rollback --to baseline`)")
        if any(x.get("parity") for r in rs for x in r["exports"]):
            app.say("exports: GGUF top-1 agreement / mean KL with the merged model (the untuned base's GGUF "
                    "of the same type)")

    app.emit(rows, render)


@click.command()
@click.argument("ref")
@model_option
@pass_app
def card(app, ref, model):
    """Print a version's model card (README.md in Hugging Face's format; REF: v1.1, latest, model@v1.0)."""
    from ftctl.registry.card import show as card_of

    app.emit(card_of(app.workspace(), ref, model), lambda c: click.echo(c["card"], nl=False))


@click.command()
@click.argument("ref")
@model_option
@pass_app
def show(app, ref, model):
    """Show a version's whole models.lock entry (REF: v1.1, latest, stable, model@v1.0)."""
    from ftctl.registry.lineage import show as do_show

    def render(entry):
        import json

        app.console.print_json(json.dumps(entry, default=str))
        for x in entry.get("exports", []):
            if x.get("parity"):
                app.say(f"parity {x['kind']} {x['quant']}: {_parity(x['parity'], long=True)}")

    app.emit(do_show(app.workspace(), ref, model), render)


@click.command()
@click.argument("a")
@click.argument("b")
@model_option
@pass_app
def diff(app, a, b, model):
    """Compare versions A and B: data (rows added/removed, rating mix), params, metrics, base."""
    from ftctl.registry.lineage import diff as do_diff

    result = do_diff(app.workspace(), a, b, model)

    def render(d):
        app.say(f"[bold]{d['a']} -> {d['b']}[/]")
        app.say(f"base: {'changed' if d['base']['changed'] else 'same'} ({_fmt(d['base']['b'])})")
        data = d["data"]
        app.say(f"data: rows {data['a_rows']} -> {data['b_rows']}"
                + (f", +{data['added']} / -{data['removed']} examples" if "added" in data else f" ({data.get('note')})"))
        if "rating_mix" in data:
            app.say(f"  rating mix: {data['rating_mix']['a']} -> {data['rating_mix']['b']}")
        for k, x in d["params"].items():
            app.say(f"param {k}: {_fmt(x['a'])} -> {_fmt(x['b'])}")
        for k, x in d.get("scrub", {}).items():
            app.say(f"scrub {k}: {_fmt(x['a'])} -> {_fmt(x['b'])}")
        for k, x in d["metrics"].items():
            app.say(f"metric {k}: {_fmt(x['a'])} -> {_fmt(x['b'])}")

    app.emit(result, render)


@click.command()
@model_option
@click.option("-n", "--limit", type=int, default=50, show_default=True)
@pass_app
def log(app, model, limit):
    """Versions, evaluations, exports and deployments, newest first."""
    from ftctl.registry.lineage import log as do_log

    events = do_log(app.workspace(), model)[:limit]

    def render(es):
        for e in es:
            app.say(f"{(e['time'] or '?')[:19]}  {e['model']}@{e['version']}  [bold]{e['event']}[/]  {e['detail']}")

    app.emit(events, render)


@click.command()
@click.argument("ref")
@model_option
@pass_app
def checkout(app, ref, model):
    """Restore REF's dataset snapshot and adapter files (verified against their hashes)."""
    from ftctl.registry.lineage import checkout as do_checkout

    result = app.mutate("checkout", lambda ws: do_checkout(ws, ref, model))
    app.emit(result, lambda r: app.say(f"restored {r['model']}@{r['version']}: {', '.join(r['restored'])}"))


@click.command()
@pass_app
def push(app):
    """Push every stored dataset, adapter and export to the DVC remote."""
    from ftctl.registry.lineage import push as do_push

    result = app.mutate("push", do_push)
    app.emit(result, lambda r: app.say(f"pushed to {r['remote']}"))
