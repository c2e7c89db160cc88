"""`ftctl eval` and `ftctl chat`: thin shells over ftctl.eval (evaluate, compare, gating, predict)."""

from __future__ import annotations

from pathlib import Path

import click

from ftctl.cli.main import pass_app
from ftctl.errors import GATE_FAILED


@click.command("eval")
@click.argument("ref", required=False)
@click.option("--compare", "pair", nargs=2, metavar="A B", help="Compare two versions (paired, same examples).")
@click.option("--artifact", help="hf (adapter on its base, the default) or gguf:QUANT (an exported file).")
@click.option("--eval-set", help="test (the version's held-out split), golden, or a JSONL file.")
@click.option("--metric", "metrics", multiple=True, help="Evaluator to run (repeatable; default eval.metrics).")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N examples.")
@click.option("--gate", "apply_gate", is_flag=True, help="Apply eval.gate; exit code 5 when it fails.")
@click.option("--against", help="With --gate and one version: the baseline (default eval.gate.against).")
@click.option("--model", help="Model name (default: the workspace's default model).")
@click.option("--no-record", is_flag=True, help="Do not write the results to models.lock.")
@click.option("--sources", type=click.Path(file_okay=False, path_type=str),
              help="A folder of source documents (.txt, .md): groundedness checks each answer against them.")
@click.option("--probe-memorisation", "probe", is_flag=True,
              help="Also run the leak checks: memorisation (prompts with training-row prefixes) and phi_in_output.")
@pass_app
def eval_(app, ref, pair, artifact, eval_set, metrics, limit, apply_gate, against, model, no_record, sources, probe):
    """Evaluate a version (REF: v1.1, latest, stable, base), or compare two with --compare A B."""
    from ftctl.eval import compare, evaluate, gating

    if pair and ref:
        raise click.UsageError("give either REF or --compare A B, not both")
    opts = dict(model=model, eval_set=eval_set, artifact=artifact, metrics=list(metrics) or None, limit=limit,
                record=not no_record, sources=str(Path(sources).resolve()) if sources else None,
                log=lambda s: app.console.print(f"[dim]{s}[/]"))

    def run(ws):
        if probe:  # on top of the requested (or configured) metrics
            chosen = opts["metrics"] or list(ws.model(model).eval.metrics)
            opts["metrics"] = chosen + [m for m in ("memorisation", "phi_in_output") if m not in chosen]
        if pair and apply_gate:
            r = compare.compare(ws, *pair, **opts)
            r["gate"] = gating.check_gate(r, ws.model(r["model"]).eval.gate)
            return r
        if pair:
            return compare.compare(ws, *pair, **opts)
        if apply_gate:
            return gating.gated_compare(ws, ref or "latest", against=against, **opts)
        return evaluate.evaluate(ws, ref or "latest", **opts)

    result = app.mutate("eval", run)
    app.emit(_public(result), lambda r: _render(app, r))
    if result.get("gate") and not result["gate"]["passed"]:
        err = gating.gate_error(result)
        if app.json:  # stdout already holds the one JSON document: the reason goes to stderr
            click.echo(f"error: {err.message}", err=True)
            raise click.exceptions.Exit(GATE_FAILED)
        raise err


def _public(r: dict) -> dict:
    """The scripting contract first; the examples stay in the JSON report file."""
    keys = (("a", "b", "n", "metrics", "report") if "a" in r else ("version", "n", "metrics", "report"))
    extra = {k: v for k, v in r.items() if k not in keys}
    return {**{k: r[k] for k in keys}, **extra}


def _render(app, r: dict) -> None:
    from rich.table import Table

    from ftctl.eval.report import p_text, verdict_text

    fmt = lambda x: "—" if x is None else f"{x:.4g}"  # noqa: E731
    if "a" in r:
        t = Table(title=f"{r['model']}: {r['a']} → {r['b']} ({r['artifact']}, {r['eval_set']}, n={r['n']})")
        for col in ("metric", r["a"], r["b"], "diff", "CI", "p", "W/T/L", "verdict"):
            t.add_column(col)
        for name, m in r["metrics"].items():
            color = {"better": "green", "worse": "red"}.get(m["verdict"], "yellow")
            t.add_row(name, fmt(m["a"]), fmt(m["b"]), f"{m['diff']:+.4g}", f"[{fmt(m['ci'][0])}, {fmt(m['ci'][1])}]",
                      p_text(m), f"{m['wins']}/{m['ties']}/{m['losses']}", f"[{color}]{verdict_text(m)}[/]")
    else:
        t = Table(title=f"{r['model']}@{r['version']} ({r['artifact']}, {r['eval_set']}, n={r['n']})")
        t.add_column("metric")
        t.add_column("value")
        if r.get("vs_hf"):
            t.add_column("vs hf")
        for name, v in r["metrics"].items():
            row = [name, fmt(v)]
            if r.get("vs_hf"):
                d = r["vs_hf"].get(name, {}).get("diff")
                row.append("—" if d is None else f"{d:+.4g}")
            t.add_row(*row)
    app.console.print(t)
    for name, g in (r.get("guards") or {}).items():
        app.say(f"guard {name}: {g['a']:.3g} → {g['b']:.3g} on {g['n']} questions, {g['verdict']} "
                f"(p {g['p_value']:.3g}; margin {g['margin']:g}){' [red]FAILED[/]' if g['failed'] else ''}")
    lat = r.get("latency")
    if lat:
        sides = [(r["version"], lat)] if "version" in r else [(r["a"], lat["a"]), (r["b"], lat["b"])]
        app.say("latency: " + "; ".join(f"{v} median {s['median_s']:.3g} s, p95 {s['p95_s']:.3g} s, "
                                        f"{s['tokens_per_s']} tokens/s ({s['backend']})" for v, s in sides))
    for note in r.get("notes", []):
        app.say(f"[yellow]note:[/] {note}")
    if r.get("gate"):
        g = r["gate"]
        app.say("[green]gate passed[/]" if g["passed"] else "[red]gate failed[/]")
    app.say(f"report: {r['report']}")


@click.command()
@click.argument("ref", default="latest")
@click.option("--artifact", help="hf (default) or gguf:QUANT: chat with the exact file that ships.")
@click.option("--prompt", help="Answer this one message and exit.")
@click.option("--system", help="A system message to start the conversation with.")
@click.option("--model", help="Model name (default: the workspace's default model).")
@click.option("--n-gpu-layers", type=click.IntRange(min=-1),
              help="GGUF: layers llama.cpp offloads to the GPU (-1: all; default eval.n_gpu_layers).")
@pass_app
def chat(app, ref, artifact, prompt, system, model, n_gpu_layers):
    """Chat with a version in the terminal (/reset starts over, /exit or Ctrl-D quits)."""
    from ftctl.eval import predict

    ws = app.workspace()
    target, backend = predict.chat_backend(ws, ref, model=model, artifact=artifact, n_gpu_layers=n_gpu_layers)
    start = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        answer = backend.generate([[*start, {"role": "user", "content": prompt}]])[0]
        app.emit({"model": target.model, "version": target.version, "artifact": target.artifact,
                  "prompt": prompt, "answer": answer}, lambda r: click.echo(r["answer"]))
        return
    app.say(f"[dim]chatting with {target.model}@{target.label}; /reset starts over, /exit quits[/]")
    history = list(start)
    while True:
        try:
            text = click.prompt("you", prompt_suffix="> ")
        except (EOFError, click.Abort):
            break
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history = list(start)
            continue
        history.append({"role": "user", "content": text})
        answer = backend.generate([history])[0]
        history.append({"role": "assistant", "content": answer})
        click.echo(f"{target.version}> {answer}")
