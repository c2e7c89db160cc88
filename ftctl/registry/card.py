"""A version's model card: README.md in Hugging Face's format, beside the adapter it describes.

The YAML metadata is what the Hub and its tools read (``base_model``, ``library_name: peft``,
the base's ``license``, eval results as ``model-index``), written by huggingface_hub's
``ModelCardData``; the body is everything models.lock knows of the version: the data card's
counts, the training settings, each evaluation and comparison with its verdict, the exported
files with their parity. It replaces the README peft writes (a template pointing at a local
path), is written when a version is trained and again when it is exported, and is tracked with
the adapter. `ftctl card VERSION` prints the current one.

The base's license comes from the base itself: its README's metadata (an HF folder) or the GGUF
``general.license`` key; neither found, the card says so rather than guess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftctl.lib import basemodel
from ftctl.registry.lockfile import VersionEntry

CARD_FILE = "README.md"
# catalogue names -> their Hub ids (base_model must name a model, not a path on this machine)
HUB_IDS = {basemodel.DEFAULT_BASE: "HuggingFaceTB/SmolLM2-135M-Instruct"}


def render(ws, model: str, version: str, entry: VersionEntry | None = None) -> str:
    """The card of ``model@version`` from its models.lock entry (or ``entry``, about to be recorded)."""
    from huggingface_hub import ModelCard, ModelCardData

    entry = entry or ws.read_lock().state(model).versions[version]
    base = base_facts(ws, entry.base)
    data = ModelCardData(
        base_model=base["id"], library_name="peft", license=base["license"], model_name=f"{model}@{version}",
        pipeline_tag="text-generation", tags=["ftctl", "lora", "peft", entry.training.get("trainer") or "lora"],
        eval_results=_eval_results(model, version, entry) or None)
    body = "\n".join(_body(ws, model, version, entry, base))
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def show(ws, ref: str, model: str | None = None) -> dict[str, Any]:
    """`ftctl card REF`: the card as models.lock has the version now, and where it is stored."""
    from ftctl.errors import UsageError
    from ftctl.registry.lineage import resolve_ref

    m, v = resolve_ref(ws, ref, model)
    if v == "base":
        raise UsageError("`base` has no model card of ftctl's", hint="name a trained version, e.g. `ftctl card latest`")
    entry = ws.read_lock().state(m).versions[v]
    stored = ws.root / (entry.adapter.path or "") / CARD_FILE
    return {"model": m, "version": v, "path": ws.rel(stored) if stored.is_file() else None,
            "card": render(ws, m, v, entry)}


def write(ws, model: str, version: str, adapter_dir: Path, entry: VersionEntry | None = None) -> Path:
    from ftctl.lib.atomic import write_text

    path = Path(adapter_dir) / CARD_FILE
    write_text(path, render(ws, model, version, entry))
    return path


def base_facts(ws, lineage: dict[str, Any]) -> dict[str, Any]:
    """The base's Hub id (or the name it goes by here) and license, read from the base."""
    ref = str(lineage.get("ref") or "")
    path = Path(lineage.get("path") or "")
    meta: dict[str, Any] = {}
    try:
        if path.suffix == ".gguf" and path.is_file():
            meta = _gguf_meta(path)
        elif (path / "README.md").is_file():
            from huggingface_hub import ModelCard

            meta = ModelCard.load(path / "README.md").data.to_dict()
    except Exception:  # a base card or GGUF header we cannot read: the card says "not found"
        meta = {}
    hub = HUB_IDS.get(ref) or meta.get("hub_id")
    name = hub or (ref if ref and not Path(ref).is_absolute() else path.name or ref)
    return {"id": name, "ref": ref, "license": meta.get("license"), "sha256": lineage.get("sha256")}


def _gguf_meta(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def value(key):
        f = fields.get(key)
        return f.contents() if f is not None else None

    repo = value("general.source.huggingface.repository")
    out = {"license": value("general.license")}
    if isinstance(repo, str) and repo.count("/") == 1 and "://" not in repo:
        out["hub_id"] = repo
    return out


def _eval_results(model: str, version: str, entry: VersionEntry) -> list:
    """model-index: the newest evaluation of the HF artifact on each eval set, each metric's mean."""
    from huggingface_hub import EvalResult

    newest: dict[str, dict] = {}
    for ev in entry.evals:
        if ev.get("artifact", "hf") != "hf":
            continue
        newest[ev.get("eval_set", "test")] = ev
    out = []
    for eval_set, ev in newest.items():
        for metric, value in (ev.get("metrics") or {}).items():
            mean = value.get("b") if isinstance(value, dict) else value
            if isinstance(mean, int | float):
                out.append(EvalResult(task_type="text-generation", dataset_type="ftctl-snapshot",
                                      dataset_name=f"{model} {eval_set} set", dataset_split=eval_set,
                                      metric_type=metric, metric_value=round(float(mean), 4)))
    return out


def _body(ws, model: str, version: str, e: VersionEntry, base: dict) -> list[str]:
    t = e.training
    lines = [f"# {model}@{version}", "",
             f"A LoRA adapter of [{base['id']}](https://huggingface.co/{base['id']})"
             if "/" in str(base["id"]) else f"A LoRA adapter of `{base['id']}`",
             f"trained by ftctl ({t.get('trainer') or 'lora'}) on {e.created[:10]}"
             + (f", continuing {e.parent}" if t.get("from") else "") + ".", "",
             f"License: {base['license'] or 'not found in the base model (check its own terms)'}.", "",
             "## Data", ""]
    d = e.dataset
    card, rows = d.get("card") or {}, d.get("rows") or {}
    if card:
        lines += [f"- read {card.get('read')}, kept {card.get('kept')}; filtered: {_counts(card.get('filtered'))}; "
                  f"rejected: {_counts(card.get('rejected'))}; scrubbed: {_counts(card.get('scrubbed'))}"]
    if rows:
        lines += [f"- splits: {_counts(rows)}"]
    ex = d.get("examples")
    if isinstance(ex, dict):
        lines += [f"- trained on {ex.get('used')} conversations (skipped: {_counts(ex.get('skipped'))})"]
    elif ex is not None:  # a third-party trainer's own record (TrainResult.data is free-form)
        lines += [f"- trained on {ex} examples"]
    lines += [f"- snapshot: `{d.get('train')}` (sha256 {str(d.get('train_sha256'))[:12]})", "",
              "## Training", ""]
    params = t.get("params") or {}
    shown = ("r", "alpha", "dropout", "target_modules", "epochs", "max_steps", "batch_size", "gradient_accumulation",
             "learning_rate", "scheduler", "warmup", "max_length", "packing", "precision", "seed", "beta")
    lines += ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {json.dumps(params[k]) if isinstance(params[k], list | dict) else params[k]} |"
              for k in shown if k in params]
    lines += ["", f"{t.get('steps')} optimizer steps, {t.get('tokens')} tokens in {t.get('seconds')} s "
                  f"({t.get('tokens_per_s')} tokens/s); libraries: {_counts(t.get('libraries'))}.", ""]
    m = e.metrics
    if m:
        lines += ["Losses: " + ", ".join(f"{k} {m[k]}" for k in ("first_loss", "last_loss", "train_loss", "val_loss")
                                         if m.get(k) is not None) + ".", ""]
    lines += ["## Evaluation", ""]
    if not e.evals:
        lines += ["Not evaluated yet (`ftctl eval`).", ""]
    for ev in e.evals:
        against = ev.get("against")
        lines += [f"### {'against ' + against if against else 'scores'} ({ev.get('artifact', 'hf')}, "
                  f"{ev.get('eval_set')} set, n={ev.get('n')})", ""]
        if against:
            lines += ["| metric | " + against + " | " + version + " | diff | 95% CI | p | verdict |",
                      "|---|---|---|---|---|---|---|"]
            for k, v in (ev.get("metrics") or {}).items():
                ci = v.get("ci") or [None, None]
                lines.append(f"| {k} | {_num(v.get('a'))} | {_num(v.get('b'))} | {_num(v.get('diff'))} | "
                             f"[{_num(ci[0])}, {_num(ci[1])}] | {_num(v.get('p_value'))} | {v.get('verdict')} |")
        else:
            lines += ["| metric | mean |", "|---|---|"]
            lines += [f"| {k} | {_num(v)} |" for k, v in (ev.get("metrics") or {}).items()]
        lines.append("")
    lines += ["## Files", ""]
    files = [x for x in e.exports if x.get("kind") != "modelfile"]
    if files:
        lines += ["| file | kind | quant | top-1 agreement | mean KL | the base's (same type) | sha256 |",
                  "|---|---|---|---|---|---|---|"]
        for x in files:
            p = x.get("parity") or {}
            b = p.get("base") or {}
            lines.append(f"| `{Path(x['path']).name}` | {x['kind']} | {x.get('quant') or ''} | "
                         f"{_pct(p.get('top1', x.get('token_agreement')))} | {_num(p.get('kl_mean'))} | "
                         f"{(_pct(b.get('top1')) + ' / ' + _num(b.get('kl_mean'))) if b else ''} | "
                         f"{str(x.get('sha256') or '')[:12]} |")
    else:
        lines += ["Not exported yet (`ftctl export`)."]
    lines += ["", "## Use", "", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM", "",
              f'base = AutoModelForCausalLM.from_pretrained("{base["id"]}")',
              f'model = PeftModel.from_pretrained(base, "{e.adapter.path or "."}")', "```", "",
              f"Lineage: `ftctl show {model}@{version}`; this card: `ftctl card {model}@{version}`.", ""]
    return lines


def _counts(d: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) if isinstance(d, dict) and d else "none"


def _num(x: Any) -> str:
    return "" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def _pct(x: Any) -> str:
    return "" if x is None else f"{x:.1%}"
