"""`ftctl export VERSION [--merged] [--gguf] [--quant Q4_K_M,Q8_0] [--lora-gguf] [--force]`."""

from __future__ import annotations

import click

from ftctl.cli.main import App, pass_app


@click.command("export")
@click.argument("version", default="latest")
@click.option("--merged/--no-merged", default=None, help="Keep the merged Hugging Face directory (safetensors).")
@click.option("--gguf/--no-gguf", default=None, help="Write GGUF files (the default when nothing else is chosen).")
@click.option("--quant", "quants", multiple=True, metavar="TYPES",
              help="GGUF types, comma-separated: F16, Q8_0, Q6_K, Q4_K_M, ... (default: export.gguf.quants).")
@click.option("--lora-gguf/--no-lora-gguf", default=None, help="Also write the adapter as a GGUF LoRA.")
@click.option("--force", is_flag=True, help="Export again even if this version's files exist.")
@pass_app
def export(app: App, version, merged, gguf, quants, lora_gguf, force):
    """Merge VERSION's adapter, convert to GGUF with llama.cpp, quantize and verify.

    Every file is checked against the merged model (chat template, EOS/BOS ids, greedy tokens
    on probe prompts) before it lands in exports/<model>/<version>/ and models.lock.
    """
    from ftctl.export import export as run_export

    result = app.mutate("export", lambda ws: run_export(ws, version, merged=merged, gguf=gguf, quants=quants,
                                                       lora_gguf=lora_gguf, force=force, log=app.say))
    app.emit({k: result[k] for k in ("version", "files")} | {"model": result["model"], "skipped": result["skipped"]},
             lambda d: _render(app, d))


def _render(app: App, data) -> None:
    from rich.table import Table

    # parity: teacher-forced top-1 agreement and mean KL with the merged model, beside what the
    # same type costs the untuned base (docs/export.md)
    table = Table("file", "kind", "quant", "top-1", "mean KL", "base top-1 / KL", "sha256", box=None)
    for f in data["files"]:
        p = f.get("parity") or {}
        b = p.get("base") or {}
        agree = f"{f['token_agreement']:.1%}" if f.get("token_agreement") is not None else ""
        table.add_row(f["path"], f["kind"], f.get("quant") or "", agree,
                      f"{p['kl_mean']:.4f}" if p else "", f"{b['top1']:.1%} / {b['kl_mean']:.4f}" if b else "",
                      (f.get("sha256") or "")[:12])
    app.console.print(table)
    if data["skipped"]:
        app.say("already exported; nothing changed (--force exports again)")
