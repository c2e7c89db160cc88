"""Evaluation reports: JSON (machines), Markdown (terminal, PRs), self-contained HTML (people).

The HTML page embeds its plots as inline SVG drawn by matplotlib (metric bars with CI
whiskers, score distributions, per-slice differences): no external asset, it opens anywhere.
Files are written atomically, so a report on disk is always a complete one.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftctl.lib.atomic import write_text


# the texts a report quotes (rows of `examples` and `changed`): prompts, references, outputs
QUOTED = ("prompt", "reference", "prediction", "a", "b")


def write_all(directory: Path, stem: str, data: dict[str, Any], *, kind: str,
              scrub: Callable[[str], str] | None = None) -> dict[str, Path]:
    """Write ``<stem>.json``, ``.md`` and ``.html``; returns their paths by format.

    Reports are committed to git: every quoted text goes through ``scrub`` first (by default
    the scrubber with its default settings), so PHI in an eval set or a model's output never
    reaches the repository. ``data`` that :func:`scrubbed` returned already is written as is."""
    if not data.get("scrubbed"):
        data = scrubbed(data, scrub or _default_scrub())
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / f"{stem}.json", "md": directory / f"{stem}.md", "html": directory / f"{stem}.html"}
    md = markdown(data, kind)
    write_text(paths["json"], json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    write_text(paths["md"], md)
    write_text(paths["html"], to_html(data, kind, md))
    return paths


def scrubbed(data: dict[str, Any], scrub: Callable[[str], str]) -> dict[str, Any]:
    """A copy of ``data`` whose quoted texts went through ``scrub`` (the caller's stays as is)."""
    out = dict(data)
    for key in ("examples", "changed"):
        if data.get(key):
            out[key] = [{**r, **{f: scrub(r[f]) for f in QUOTED if isinstance(r.get(f), str)}} for r in data[key]]
    out["scrubbed"] = True
    return out


def _default_scrub() -> Callable[[str], str]:
    from collections import Counter

    from ftctl.lib.scrub import Scrubber

    s = Scrubber()
    return lambda text: s.scrub(text, Counter())


def _f(x: Any, digits: int = 4) -> str:
    return "—" if x is None else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    esc = lambda v: _f(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(data: dict[str, Any], kind: str) -> str:
    if kind == "eval":
        out = [f"# Evaluation: {data['model']}@{data['version']} ({data['artifact']})\n",
               f"Eval set `{data['eval_set']}` ({data['n']} examples, sha256 {data['eval_set_sha256'][:12]}).\n",
               _table(["metric", "value"], [[k, v] for k, v in data["metrics"].items()])]
        if data.get("vs_hf"):
            out += ["\n## Quantisation cost (GGUF vs HF)\n",
                    _table(["metric", "hf", "gguf", "diff"],
                           [[k, v["hf"], v["gguf"], v["diff"]] for k, v in data["vs_hf"].items()])]
    else:
        out = [f"# Comparison: {data['model']} {data['a']} → {data['b']} ({data['artifact']})\n",
               f"Eval set `{data['eval_set']}` ({data['n']} examples). Difference is b − a; p from a paired "
               "sign-flip permutation test (the verdict follows it), interval from scipy's bootstrap (BCa). "
               "⚑: the interval disagrees with the test (see the notes).\n",
               _table(["metric", data["a"], data["b"], "diff", "CI", "p", "win/tie/loss", "verdict", "needs n"],
                      [[k, m["a"], m["b"], m["diff"], f"[{_f(m['ci'][0])}, {_f(m['ci'][1])}]", p_text(m),
                        f"{m['wins']}/{m['ties']}/{m['losses']}", verdict_text(m), m.get("needed_n")]
                       for k, m in data["metrics"].items()])]
        for field, groups in data.get("slices", {}).items():
            out += [f"\n## By {field} (Holm-adjusted p across the {len(groups)} slices)\n", _table(
                [field, "n", *[f"{m} diff, p (Holm), verdict" for m in data["metrics"]]],
                [[g, s["n"], *[_slice_cell(s["metrics"][m]) for m in data["metrics"]]] for g, s in groups.items()])]
        if data.get("changed"):
            out.append(f"\n## Examples that changed most ({data['primary']})\n")
            for c in data["changed"]:
                out.append(f"\n**{c['id']}** — {_f(c['score_a'])} → {_f(c['score_b'])}\n\n"
                           f"- prompt: {_quote(c['prompt'])}\n- reference: {_quote(c['reference'])}\n"
                           f"- {data['a']}: {_quote(c['a'])}\n- {data['b']}: {_quote(c['b'])}\n")
    out += _failed_md(data) + _guards_md(data) + _latency_md(data, kind) + _details_md(data, kind)
    if data.get("gate"):
        g = data["gate"]
        out.append(f"\n## Gate: {'PASSED' if g['passed'] else 'FAILED'}\n\n" + "".join(f"- {r}\n" for r in g["reasons"]))
    if data.get("notes"):
        out.append("\n## Notes\n\n" + "".join(f"- {n}\n" for n in data["notes"]))
    return "\n".join(out)


def _failed_md(data: dict[str, Any]) -> list[str]:
    """The answers that failed to generate (a slot's error, a prompt beyond the context): not scored."""
    f = data.get("failed") or {}
    if not f.get("n"):
        return []
    return [f"\n## {f['n']} failed (no answer generated: not scored)\n",
            _table(["example", "version", "reason"], [[r["id"], r["version"], r["reason"]] for r in f["examples"]])]


def _guards_md(data: dict[str, Any]) -> list[str]:
    g = data.get("guards")
    if not g:
        return []
    rows = [[k, m["n"], m["a"], m["b"], m["diff"], p_text(m), m["verdict"], m["margin"],
             "FAILED" if m["failed"] else "ok"] for k, m in g.items()]
    return ["\n## Guard tasks (general ability outside the feedback)\n",
            _table(["task", "n", data["a"], data["b"], "diff", "p", "verdict", "margin", "guard"], rows)]


def _latency_md(data: dict[str, Any], kind: str) -> list[str]:
    lat = data.get("latency")
    if not lat:
        return []
    if kind == "eval":
        sides = {data["version"]: lat}
    else:
        sides = {data["a"]: lat["a"], data["b"]: lat["b"]}
    rows = [[name, s["backend"], s["n"], s["median_s"], s["p95_s"], s["tokens_per_s"]] for name, s in sides.items()]
    out = ["\n## Latency (generation, measured when the answers were generated)\n",
           _table(["version", "backend", "n", "median s", "p95 s", "tokens/s"], rows)]
    if kind == "compare" and lat.get("verdict"):
        out.append(f"\n{data['b']} takes {lat['median_ratio']}x {data['a']}'s median time; paired difference "
                   f"{lat['diff_s']:+.4g} s (CI [{lat['ci'][0]:.4g}, {lat['ci'][1]:.4g}], p {lat['p_value']:.3g}): "
                   f"{lat['verdict']} (lower is better)\n")
    return out


def _details_md(data: dict[str, Any], kind: str) -> list[str]:
    """Per-side corpus figures of the evaluators that give them (classification: per label)."""
    det = data.get("details") or {}
    sides = {data["version"]: det} if kind == "eval" else {data["a"]: det.get("a", {}), data["b"]: det.get("b", {})}
    out: list[str] = []
    for side, metrics in sides.items():
        for name, d in metrics.items():
            out.append(f"\n## {name}: {side}\n")
            if "unparsed" in d:
                out.append(f"{d['scored']} scored, {d['unparsed']} unparsed (no label found: not counted as wrong), "
                           f"{d['no_expert_label']} without an expert label; accuracy {_f(d.get('accuracy'))}.\n")
            if "per_label" in d:
                out.append(_table(["label", "precision", "recall", "F1", "FP rate", "FN rate", "support"],
                                  [[k, v["precision"], v["recall"], v["f1"], v["fpr"], v["fnr"], v["support"]]
                                   for k, v in d["per_label"].items()]))
                out.append("\nConfusion (rows: expert, columns: answer)\n")
                out.append(_table(["expert \\ answer", *d["labels"]],
                                  [[k, *row.values()] for k, row in d["confusion"].items()]))
            elif "unparsed" not in d:
                out.append("".join(f"- {k}: {_f(v) if not isinstance(v, (dict, list)) else json.dumps(v)}\n"
                                   for k, v in d.items()))
    return out


def p_text(m: dict[str, Any]) -> str:
    """A p-value with its Monte Carlo error when it has one: 0.0002±0.0001, never a bare 0."""
    p, err = m["p_value"], m.get("p_error") or 0
    return f"{p:.2g}±{err:.1g}" if err else f"{p:.3g}"


def verdict_text(m: dict[str, Any]) -> str:
    return m["verdict"] + (" ⚑" if m.get("flag") else "")


def _slice_cell(c: dict[str, Any]) -> str:
    if c.get("p_holm") is None:
        return "—"
    return f"{c['diff']:+.3g}, p {c['p_holm']:.3g}, {c['verdict']}"


def _quote(text: str | None) -> str:
    return "—" if not text else " ".join(text.split())[:400]


# --- HTML -------------------------------------------------------------------------------------


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog: the SVG sits inline in the page


def _plots(data: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "ftctl"  # stable element ids: the same data gives the same page
    plt.rcParams["svg.fonttype"] = "none"  # text stays text (small, searchable)
    metrics = list(data["metrics"])
    if not metrics:
        return []
    out = []
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 2.8), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        if kind == "compare":
            m = data["metrics"][name]
            ax.bar([data["a"], data["b"]], [m["a"], m["b"]], color=["#9aa5b1", "#3b82f6"])
            # the whisker shows where b's mean may lie: b's mean shifted by the CI of the difference
            lo, hi = m["ci"]
            ax.errorbar([1], [m["b"]], yerr=[[m["diff"] - lo], [hi - m["diff"]]], color="black", capsize=6)
            ax.set_title(f"{name}\n{m['verdict']}", fontsize=9)
        else:
            ax.bar([data["version"]], [data["metrics"][name] or 0], color="#3b82f6")
            ax.set_title(name, fontsize=9)
    out.append(("Metrics" + (" (whisker: the CI of the difference)" if kind == "compare" else ""), _svg(fig)))

    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 2.4), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        series = ({"a": data["a"], "b": data["b"]} if kind == "compare" else {None: data["version"]})
        for side, label in series.items():
            vals = [(r["scores"][side] if side else r["scores"]).get(name) for r in data["examples"]]
            vals = [v for v in vals if v is not None]
            if vals:
                ax.hist(vals, bins=10, alpha=0.6, label=label)
        ax.set_title(name, fontsize=9)
        if kind == "compare":
            ax.legend(fontsize=7)
    out.append(("Score distributions", _svg(fig)))

    primary = data.get("primary")
    for field, groups in (data.get("slices") or {}).items():
        if primary is None:
            break
        names = list(groups)
        diffs = [groups[g]["metrics"][primary]["diff"] or 0 for g in names]
        fig, ax = plt.subplots(figsize=(5, 0.4 * len(names) + 1))
        ax.barh(names, diffs, color=["#16a34a" if d >= 0 else "#dc2626" for d in diffs])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"{primary}: {data['b']} − {data['a']}")
        out.append((f"By {field}", _svg(fig)))
    return out


def to_html(data: dict[str, Any], kind: str, md: str) -> str:
    title = html.escape(md.splitlines()[0].lstrip("# "))
    sections = "".join(f"<h2>{html.escape(t)}</h2><div class=plot>{svg}</div>" for t, svg in _plots(data, kind))
    rows = "".join(_html_example(r, data, kind) for r in data["examples"][:200])
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title>
<style>body{{font:14px system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
pre{{white-space:pre-wrap;background:#f6f8fa;padding:1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:4px;vertical-align:top;text-align:left}}.plot svg{{max-width:100%;height:auto}}</style>
</head><body><h1>{title}</h1>
<pre>{html.escape(md.split(chr(10), 1)[1] if chr(10) in md else "")}</pre>
{sections}
<h2>Examples</h2><table>{_html_header(data, kind)}{rows}</table>
</body></html>
"""


def _html_header(data: dict[str, Any], kind: str) -> str:
    cols = ["prompt", "reference", *((data["a"], data["b"]) if kind == "compare" else ("prediction",)), "scores"]
    return "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"


def _html_example(r: dict[str, Any], data: dict[str, Any], kind: str) -> str:
    cells = [r["prompt"], r["reference"] or "—", *((r["a"], r["b"]) if kind == "compare" else (r["prediction"],)),
             json.dumps(r["scores"], default=str)]
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
