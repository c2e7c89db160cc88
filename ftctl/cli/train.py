"""`ftctl train`: a thin shell over ftctl.verbs.train (ftctl.train.train, collecting first when asked)."""

from __future__ import annotations

from pathlib import Path

import click

from ftctl.cli.main import pass_app


@click.command()
@click.option("--model", help="The model to train (default: default_model in ftctl.yaml).")
@click.option("--trainer", help="The trainer plugin (default: train.trainer), e.g. dpo or kto on preference data.")
@click.option("--from", "from_", metavar="VERSION", help="Continue this version's adapter on the current data.")
@click.option("--new-only", is_flag=True,
              help="With --from: train only on rows collected after that version's snapshot (incremental).")
@click.option("--resume", is_flag=True, help="Finish the newest unfinished run from its last checkpoint.")
@click.option("--major", is_flag=True, help="Start a new major version (v2.0 after v1.x).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many optimizer steps.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), help="Passes over the training data.")
@click.option("--use-qlora", "qlora", is_flag=True, default=None,
              help="4-bit QLoRA (bitsandbytes, `pip install 'ftctl[qlora]'`: CUDA or its CPU backend).")
@click.option("--nproc", type=click.IntRange(min=1), help="Processes to train with (torchrun, DDP).")
@click.option("--accelerate-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An accelerate config (FSDP, DeepSpeed, multi-node) to launch with.")
@click.option("--dry-run", is_flag=True, help="Show what would be trained on what; train nothing.")
@click.option("--preview", is_flag=True,
              help="Show a rendered example (trained spans in [[ ]]), lengths and the predicted peak memory.")
@click.option("--force", is_flag=True, help="Train even when the run is predicted not to fit in memory.")
@pass_app
def train(app, model, trainer, from_, new_only, resume, major, max_steps, epochs, qlora, nproc, accelerate_config, dry_run,
          preview, force):
    """Fine-tune a LoRA/QLoRA adapter on the latest dataset snapshot into a new version."""
    from ftctl.verbs import train as do_train

    if trainer:  # the same as --set train.trainer=NAME
        app.overrides = (*app.overrides, f"train.trainer={trainer}")

    def run(ws):
        return do_train(ws, model, from_=from_, new_only=new_only, resume=resume, major=major, max_steps=max_steps, epochs=epochs,
                        dry_run=dry_run, preview=preview, nproc=nproc, accelerate_config=accelerate_config,
                        qlora=qlora or None, log=app.say, show_progress=not app.json and app.console.is_terminal,
                        force=force)

    result = run(app.workspace()) if dry_run or preview else app.mutate("train", run)
    app.emit(result, lambda r: _render(app, r, dry_run, preview))


def _render(app, r: dict, dry_run: bool, preview: bool) -> None:
    if dry_run:
        app.say(f"would train {r['model']}@{r['version']} from {r['parent'] or 'base ' + r['base']} "
                f"with {r['trainer']} on {r['data']['train']} ({r['rows'].get('train')} rows"
                + (f" new since {r['new_only']['since']}" if r.get("new_only") else "")
                + f"{', val ' + str(r['rows'].get('val')) if r['rows'].get('val') else ''})")
        app.say("params: " + ", ".join(f"{k}={v}" for k, v in r["params"].items() if v is not None))
        _render_plan(app, r.get("plan"))
        return
    if preview:
        from rich.markup import escape

        app.say("[bold]rendered example[/] (trained spans in [[ ]]):")
        app.console.print(escape(r["example"] or "(none)"), markup=False)
        app.say(f"[bold]token lengths[/] ({r['examples']} examples, max_length {r['max_length']}):")
        top = max((b["count"] for b in r["histogram"]), default=1) or 1
        for b in r["histogram"]:
            over = " > max_length" if b["from"] > r["max_length"] else ""
            app.say(f"  {b['from']:>6}-{b['to']:<6} {'#' * round(30 * b['count'] / top):<30} {b['count']}{over}")
        app.say(f"{r['too_long']} longer than max_length (skipped), {r['no_assistant_turn']} without an "
                f"assistant turn (skipped)")
        ph = r.get("placeholders")
        if ph:
            color = "yellow" if ph["share"] > 0.05 or ph["only_placeholders"] else "default"
            app.say(f"[{color}]scrub placeholders: {ph['with_placeholder']} of {ph['answers']} trained answers "
                    f"({ph['share']:.1%}) hold one, {ph['only_placeholders']} are nothing else[/]"
                    + (" (" + ", ".join(f"<{t}> {n}" for t, n in ph["by_type"].items()) + ")" if ph["by_type"] else ""))
        app.say(f"architecture {r['architecture']}: "
                + ("converts to GGUF" if r["gguf_convertible"]
                   else "[yellow]will not export to GGUF:[/] " + "; ".join(r["export_problems"])))
        _render_plan(app, r.get("plan"))
        _render_memory(app, r.get("memory") or [])
        return
    app.say(f"[green]created {r['model']}@{r['version']}[/] (parent {r['parent'] or 'base'}): "
            f"train loss {r['train_loss']}, val loss {r['val_loss']}, {r['steps']} steps, "
            f"{r['tokens_per_s']} tokens/s, peak RSS {r.get('peak_rss_mb')} MB, adapter {r['adapter']}")
    for name, t in (r.get("tracking") or {}).items():  # a tracker that failed is said, never silent
        if t.get("ok"):
            where = t.get("run_id") or t.get("logs") or t.get("run_dir") or ""
            app.say(f"tracked in {name}" + (f": {where}" if where else ""))
        else:
            app.say(f"[yellow]tracking failed: {name}:[/] {t.get('error')}")


def _render_plan(app, plan: dict | None) -> None:
    from rich.markup import escape

    from ftctl.lib.plan import describe

    for line in describe(plan) if plan else []:
        warning = line.startswith("warning: ")
        app.say(f"[yellow]{escape(line)}[/]" if warning else escape(line))


def _render_memory(app, rows: list[dict]) -> None:
    """Predicted peak memory: on the configured device, and on a 24 GB and a 12 GB card."""
    if not rows:
        return
    gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
    app.say("[bold]predicted peak memory[/] (from the base's config; no weights loaded):")
    for r in rows:
        if "error" in r:
            app.say(f"  {r['device']:<12} [yellow]{r['error']}[/]")
            continue
        verdict = "[green]fits[/]" if r["fits"] else "[red]does not fit[/]"
        parts = ", ".join(f"{k.replace('_', ' ')} {gib(v)}" for k, v in r["parts"].items())
        app.say(f"  {r['device']:<12} {gib(r['total']):>9} of {gib(r['device_bytes'])}: {verdict} ({parts})")
    app.say(f"  [dim]{'; '.join(rows[0].get('notes', []))}[/]")
