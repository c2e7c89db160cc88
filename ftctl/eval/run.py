"""`ftctl eval`: score a version, compare two honestly, and gate a deploy on the result.

The flow: resolve what to score (a version's adapter on its base, or one of its exported GGUF
files) -> load the eval set -> generate (greedy, cached on disk by content) -> score with each
evaluator plugin (per example) -> aggregate / pair -> write the reports -> record the headline
numbers in models.lock through ``ws.record``. Callers hold the workspace run lock (the CLI's
``app.mutate``; deploy and cycle already hold it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftctl import plugins
from ftctl.util.atomic import write_text
from ftctl.config import GateConfig, ModelConfig
from ftctl.errors import GateFailed, UsageError
from ftctl.records import Example, read_jsonl
from ftctl.registry.versions import resolve, split_ref

Log = Callable[[str], None]


# --- what is evaluated ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    model: str
    version: str  # vX.Y or "base"
    artifact: str  # "hf" or "gguf:<QUANT>"
    base_ref: str
    adapter_dir: Path | None = None
    gguf: Path | None = None
    identity: str = ""  # content identity for the prediction cache (adapter md5 / gguf sha256)

    @property
    def label(self) -> str:
        return self.version if self.artifact == "hf" else f"{self.version} ({self.artifact})"


def parse_artifact(text: str | None) -> tuple[str, str | None]:
    """``hf`` -> ("hf", None); ``gguf:Q6_K`` -> ("gguf", "Q6_K"); ``gguf`` -> ("gguf", None)."""
    kind, _, quant = (text or "hf").partition(":")
    if kind not in ("hf", "gguf") or (kind == "hf" and quant):
        raise UsageError(f"unknown artifact {text!r}", hint="use hf, or gguf:<QUANT> such as gguf:Q6_K")
    return kind, quant or None


def resolve_target(ws, ref: str, *, model: str | None = None, artifact: str | None = None) -> Target:
    m, r = split_ref(ref, model or ws.config.default_model)
    cfg = ws.model(m)
    version = resolve(ws.read_lock(), m, r)
    kind, quant = parse_artifact(artifact or cfg.eval.artifact)
    if version == "base":
        return _base_target(ws, m, cfg, kind, quant)
    entry = ws.read_lock().state(m).versions[version]
    base_ref = entry.base.get("ref") or cfg.base
    if kind == "gguf":
        gguf = [x for x in entry.exports if x.get("kind") == "gguf" and (quant is None or x.get("quant") == quant)]
        if not gguf:
            have = ", ".join(f"{x.get('kind')}:{x.get('quant')}" for x in entry.exports) or "none"
            raise UsageError(f"{m}@{version} has no GGUF export{f' {quant}' if quant else ''}",
                             hint=f"exports: {have}; run `ftctl export {version}` first")
        x = gguf[0]
        path = ws.root / x["path"]
        if not path.is_file():
            raise UsageError(f"{x['path']} is not in the workspace", hint=f"run `ftctl checkout {version}`")
        return Target(m, version, f"gguf:{x.get('quant')}", base_ref, gguf=path,
                      identity=x.get("sha256") or _sha256(path))
    adapter = entry.adapter.get("path")
    if not adapter:
        raise UsageError(f"{m}@{version} has no adapter", hint="train it again, or evaluate `base`")
    adapter_dir = ws.root / adapter
    if not adapter_dir.is_dir():
        raise UsageError(f"the adapter of {m}@{version} is not in the workspace ({adapter})",
                         hint=f"run `ftctl checkout {version}` to restore it from DVC")
    return Target(m, version, "hf", base_ref, adapter_dir=adapter_dir,
                  identity=entry.adapter.get("md5") or _dir_digest(adapter_dir))


def _base_target(ws, model: str, cfg: ModelConfig, kind: str, quant: str | None) -> Target:
    if kind == "hf":
        return Target(model, "base", "hf", cfg.base, identity=f"base:{cfg.base}")
    from ftctl.train import basemodel

    # the base's own GGUF file (no conversion needed to find it)
    path = basemodel.CATALOGUE[cfg.base]() if cfg.base in basemodel.CATALOGUE else Path(cfg.base).expanduser()
    path = path if path.is_absolute() else ws.root / path
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise UsageError(f"the base of {model} ({cfg.base}) is not a GGUF file",
                         hint="evaluate base with --artifact hf")
    return Target(model, "base", f"gguf:{quant or 'base'}", cfg.base, gguf=path, identity=_sha256(path))


def _sha256(path: Path) -> str:
    from ftctl.train.basemodel import file_sha256

    return file_sha256(path)


def _dir_digest(path: Path) -> str:
    from ftctl.train.basemodel import dir_sha256

    return dir_sha256(path)


# --- eval sets --------------------------------------------------------------------------------


@dataclass
class EvalSet:
    name: str  # test | golden | the file's name
    path: Path
    sha256: str
    examples: list[Example]


def load_eval_set(ws, model: str, spec: str | None = None, limit: int | None = None) -> EvalSet:
    """``test``: the held-out split of the model's current snapshot. The split hashes each
    conversation, so a test conversation stays in test across snapshots (never trained on by any
    version) and two versions are scored on the very same examples. ``golden``: curate.golden."""
    cfg = ws.model(model)
    spec = spec or cfg.eval.eval_set
    if spec == "test":
        from ftctl.data.collect import snapshot_paths

        path, name = Path(snapshot_paths(ws, model)["test"]), "test"
    elif spec == "golden":
        if not cfg.curate.golden:
            raise UsageError(f"no golden set is declared for {model}", hint="set curate.golden: path/to/golden.jsonl")
        path, name = ws.root / cfg.curate.golden, "golden"
    else:
        path = Path(spec) if Path(spec).is_absolute() else ws.root / spec
        name = path.stem
    if not path.is_file():
        raise UsageError(f"eval set {spec!r} not found ({path})",
                         hint="run `ftctl collect` (test split) or pass --eval-set PATH to a JSONL file")
    try:
        examples = list(read_jsonl(path))
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"eval set {path.name} is not a JSONL of examples: {e}",
                         hint="one Example per line: {\"messages\": [{\"role\": ..., \"content\": ...}], ...}") from None
    examples = [ex for ex in examples if any(m.get("role") == "user" for m in ex.messages)]
    if limit:
        examples = examples[:limit]
    if not examples:
        raise UsageError(f"eval set {path.name} is empty (no example with a user turn)",
                         hint="collect more data or choose another --eval-set")
    return EvalSet(name, path, _sha256(path), examples)


# --- generation (cached by content: greedy decoding makes the answers a pure function) -------


def settings_of(cfg: ModelConfig):
    from ftctl.eval.generation import GenSettings

    return GenSettings(max_new_tokens=cfg.eval.max_new_tokens, stop=tuple(cfg.eval.stop), seed=cfg.eval.seed)


def open_backend(ws, target: Target, log: Log = print):
    """The generation backend for a target (loads the model; heavy)."""
    from ftctl.eval import generation

    cfg = ws.model(target.model)
    settings = settings_of(cfg)
    if target.gguf is not None:
        return generation.GGUFBackend(target.gguf, settings, n_ctx=cfg.eval.n_ctx)
    from ftctl.train import basemodel

    resolved = basemodel.resolve_base(target.base_ref, trust_remote_code=cfg.trust_remote_code, root=ws.root,
                                      log=log)
    model, tok = generation.load_hf(resolved, target.adapter_dir)
    return generation.HFBackend(model, tok, settings, batch_size=cfg.eval.batch_size)


class Predictor:
    """Loads a backend only when a prediction is not cached yet."""

    def __init__(self, ws, target: Target, log: Log = print):
        self.ws, self.target, self.log = ws, target, log
        self._backend = None

    @property
    def backend(self):
        if self._backend is None:
            self.log(f"loading {self.target.model}@{self.target.label}")
            self._backend = open_backend(self.ws, self.target, self.log)
        return self._backend

    def predict(self, evalset: EvalSet) -> list[str]:
        from ftctl.eval.generation import prompt_messages

        cfg = self.ws.model(self.target.model)
        key = hashlib.sha256(json.dumps([self.target.artifact, self.target.base_ref, self.target.identity,
                                         evalset.sha256, len(evalset.examples), settings_of(cfg).__dict__],
                                        sort_keys=True, default=list).encode()).hexdigest()[:32]
        cache = self.ws.cache_dir / "eval" / f"{key}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        self.log(f"generating {len(evalset.examples)} answers with {self.target.label}")
        preds = self.backend.generate([prompt_messages(ex) for ex in evalset.examples])
        write_text(cache, json.dumps(preds))
        return preds


# --- scoring ----------------------------------------------------------------------------------


def build_evaluators(ws, model: str, names: list[str], log: Log = print):
    cfg = ws.model(model)
    ctx = ws.context(model, log=log)
    return {n: plugins.build("evaluator", n, cfg.eval.plugin_config(n), ctx, key=f"eval.{n}") for n in names}


def score(evaluators: dict, predictions: list[str], examples: list[Example], notes: list[str],
          predictor: Predictor | None = None) -> dict[str, list[float | None]]:
    """Per-example scores for each metric; metrics that cannot run are skipped with a note."""
    from ftctl.eval.generation import reference

    refs = [reference(ex) for ex in examples]
    missing = sum(r is None for r in refs)
    out: dict[str, list[float | None]] = {}
    for name, ev in evaluators.items():
        if ev.needs_reference and missing == len(refs):
            notes.append(f"{name}: skipped, no example has a reference answer")
            continue
        if ev.needs_reference and missing:
            notes.append(f"{name}: {missing} example(s) without a reference answer not scored")
        if predictor is not None:
            ev.ctx.extra["backend"] = _Deferred(predictor)
        scores = ev.score(predictions, refs, examples)
        if all(s is None for s in scores):
            notes.append(f"{name}: skipped, it applies to none of these examples")
            continue
        out[name] = scores
    return out


class _Deferred:
    """The backend, loaded on first use (most metrics need text only, not the model)."""

    def __init__(self, predictor: Predictor):
        self._p = predictor

    def __getattr__(self, item):
        return getattr(self._p.backend, item)


def mean(xs) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def metric_key(name: str, evalset: str, artifact: str) -> str:
    """Headline key in models.lock: plain for the default (HF on the test split), else qualified."""
    key = name if evalset == "test" else f"{name}[{evalset}]"
    return key if artifact == "hf" else f"{key}@{artifact}"


# --- evaluate one version -------------------------------------------------------------------


def evaluate(ws, ref: str, *, model: str | None = None, eval_set: str | None = None,
             artifact: str | None = None, metrics: list[str] | None = None, limit: int | None = None,
             record: bool = True, log: Log = print) -> dict[str, Any]:
    """Score one version. Returns ``{"version", "n", "metrics": {name: mean}, "report", ...}``."""

    target = resolve_target(ws, ref, model=model, artifact=artifact)
    cfg = ws.model(target.model)
    evalset = load_eval_set(ws, target.model, eval_set, limit or cfg.eval.limit)
    names = list(metrics or cfg.eval.metrics)
    predictor = Predictor(ws, target, log)
    evaluators = build_evaluators(ws, target.model, names, log=log)  # bad config fails before generating
    preds = predictor.predict(evalset)
    notes: list[str] = []
    scores = score(evaluators, preds, evalset.examples, notes, predictor)
    result = {
        "model": target.model, "version": target.version, "artifact": target.artifact,
        "eval_set": evalset.name, "eval_set_sha256": evalset.sha256, "n": len(evalset.examples),
        "metrics": {k: mean(v) for k, v in scores.items()},
        "higher_is_better": {k: evaluators[k].higher_is_better for k in scores},
        "notes": notes, "settings": settings_of(cfg).__dict__ | {"stop": list(cfg.eval.stop)},
    }
    result["vs_hf"] = _vs_hf(ws, target, evalset, result["metrics"])
    examples = [_example_row(ex, {"prediction": p}, {k: v[i] for k, v in scores.items()})
                for i, (ex, p) in enumerate(zip(evalset.examples, preds))]
    paths = _write_reports(ws, result, examples, f"eval-{target.version}", kind="eval")
    if record:
        _record_eval(ws, target, evalset, result, paths)
    return result


def _write_reports(ws, result: dict, rows: list[dict], stem: str, *, kind: str) -> list[Path]:
    """JSON + Markdown + HTML, written only once every score is in (never a partial report)."""
    from ftctl.eval import report

    stem += _suffix(result["eval_set"], result["artifact"])
    paths = report.write_all(ws.reports_dir(result["model"]), stem, result | {"examples": rows, "complete": True},
                             kind=kind)
    result["report"] = ws.rel(paths["html"])
    result["reports"] = {k: ws.rel(p) for k, p in paths.items()}
    return list(paths.values())


def _suffix(evalset: str, artifact: str) -> str:
    s = "" if evalset == "test" else f"-{evalset}"
    return s + ("" if artifact == "hf" else "-" + artifact.replace(":", "-"))


def _example_row(ex: Example, preds: dict, scores: dict) -> dict[str, Any]:
    from ftctl.eval.generation import reference

    return {"id": ex.key, "agent": ex.agent, "source": ex.source, "prompt": ex.prompt,
            "reference": reference(ex), **preds, "scores": scores}


def _vs_hf(ws, target: Target, evalset: EvalSet, metrics: dict) -> dict | None:
    """For a GGUF file: the quantisation's cost against the same version's HF result, if known."""
    if target.artifact == "hf" or target.version == "base":
        return None
    entry = ws.read_lock().state(target.model).versions[target.version]
    hf = next((e for e in reversed(entry.evals) if e.get("artifact") == "hf"
               and e.get("eval_set_sha256") == evalset.sha256 and not e.get("against")), None)
    if not hf:
        return None
    return {k: {"hf": hf["metrics"][k], "gguf": v, "diff": None if v is None else v - hf["metrics"][k]}
            for k, v in metrics.items() if hf["metrics"].get(k) is not None}


def _record_eval(ws, target: Target, evalset: EvalSet, result: dict, paths: list[Path]) -> None:
    entry = {"time": _now(), "eval_set": evalset.name, "eval_set_sha256": evalset.sha256,
             "artifact": target.artifact, "n": result["n"], "metrics": result["metrics"],
             "report": result["report"]}

    def update(lock):
        if target.version == "base":
            return  # the base has no lock entry; its report is still committed
        v = lock.state(target.model).versions[target.version]
        v.metrics.update({metric_key(k, evalset.name, target.artifact): x for k, x in result["metrics"].items()})
        v.evals.append(entry)

    ws.record(f"eval {target.model} {target.version} ({target.artifact}, {evalset.name})", update, add=paths)


def _now() -> str:
    from ftctl.registry.workspace import now

    return now()


# --- compare two versions -------------------------------------------------------------------


def compare(ws, a: str, b: str, *, model: str | None = None, eval_set: str | None = None,
            artifact: str | None = None, metrics: list[str] | None = None, limit: int | None = None,
            record: bool = True, log: Log = print) -> dict[str, Any]:
    """Paired comparison of two versions on the same examples (see the scripting contract)."""
    from ftctl.eval.stats import paired_bootstrap

    ta = resolve_target(ws, a, model=model, artifact=artifact)
    tb = resolve_target(ws, b, model=model, artifact=artifact)
    if ta.model != tb.model:
        raise UsageError(f"{a} and {b} are versions of different models",
                         hint="compare versions of one model (they share its eval set)")
    cfg = ws.model(ta.model)
    evalset = load_eval_set(ws, ta.model, eval_set, limit or cfg.eval.limit)
    names = list(metrics or cfg.eval.metrics)
    pa, pb = Predictor(ws, ta, log), Predictor(ws, tb, log)
    evaluators = build_evaluators(ws, ta.model, names, log=log)
    notes: list[str] = []
    pairwise = {n: ev for n, ev in evaluators.items() if hasattr(ev, "pairwise")}
    single = {n: ev for n, ev in evaluators.items() if n not in pairwise}
    preds_a = pa.predict(evalset)
    sa = score(single, preds_a, evalset.examples, notes, pa)
    pa._backend = None  # one model in memory at a time
    preds_b = pb.predict(evalset)
    sb = score(single, preds_b, evalset.examples, [], pb)
    from ftctl.eval.generation import reference

    refs = [reference(ex) for ex in evalset.examples]
    for n, ev in pairwise.items():
        shares = ev.pairwise(preds_a, preds_b, refs, evalset.examples)
        sa[n], sb[n] = [s[0] for s in shares], [s[1] for s in shares]
    higher = {n: evaluators[n].higher_is_better for n in sa}
    table = {}
    for n in sa:
        pairs = [(x, y) for x, y in zip(sa[n], sb[n]) if x is not None and y is not None]
        if not pairs:
            notes.append(f"{n}: no example scored for both versions")
            continue
        st = paired_bootstrap([p[0] for p in pairs], [p[1] for p in pairs], higher_is_better=higher[n],
                              n_boot=cfg.eval.bootstrap, seed=cfg.eval.seed)
        table[n] = {"a": st.a, "b": st.b, "diff": st.diff, "ci": list(st.ci), "p_value": st.p_value,
                    "verdict": st.verdict, "wins": st.wins, "ties": st.ties, "losses": st.losses,
                    "n": st.n, "higher_is_better": higher[n]}
    # the metric whose changed examples are shown: the gate's, else the first that moved at all
    moved = [n for n in table if table[n]["ties"] < table[n]["n"]]
    primary = cfg.eval.gate.metric if cfg.eval.gate.metric in table else next(iter(moved or table), None)
    rows = [_example_row(ex, {"a": x, "b": y}, {"a": {k: sa[k][i] for k in table}, "b": {k: sb[k][i] for k in table}})
            for i, (ex, x, y) in enumerate(zip(evalset.examples, preds_a, preds_b))]
    result = {
        "model": ta.model, "a": ta.version, "b": tb.version, "artifact": ta.artifact,
        "eval_set": evalset.name, "eval_set_sha256": evalset.sha256, "n": len(evalset.examples),
        "metrics": table, "slices": _slices(rows, table), "primary": primary,
        "changed": _most_changed(rows, primary, higher.get(primary, True), cfg.eval.top_changed),
        "notes": notes,
    }
    paths = _write_reports(ws, result, rows, f"compare-{ta.version}-{tb.version}", kind="compare")
    if record:
        _record_compare(ws, ta, tb, evalset, result, paths)
    return result


def _slices(rows: list[dict], table: dict) -> dict[str, dict[str, dict]]:
    """Per agent type and per source: n and both means of each metric."""
    out: dict[str, dict[str, dict]] = {}
    for field in ("agent", "source"):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r[field] or "(none)", []).append(r)
        if len(groups) < 2 and field == "agent" and "(none)" in groups:
            continue  # no agent types recorded: nothing to break down
        out[field] = {
            g: {"n": len(rs), "metrics": {m: {"a": mean(r["scores"]["a"][m] for r in rs),
                                              "b": mean(r["scores"]["b"][m] for r in rs)} for m in table}}
            for g, rs in sorted(groups.items())
        }
        for g in out[field].values():
            for v in g["metrics"].values():
                v["diff"] = None if v["a"] is None or v["b"] is None else v["b"] - v["a"]
    return out


def _most_changed(rows: list[dict], metric: str | None, higher_is_better: bool, k: int) -> list[dict]:
    if not metric:
        return []

    def delta(r):
        x, y = r["scores"]["a"][metric], r["scores"]["b"][metric]
        return 0.0 if x is None or y is None else (y - x) * (1 if higher_is_better else -1)

    ranked = sorted((r for r in rows if delta(r) != 0), key=lambda r: -abs(delta(r)))[:k]
    return [{"id": r["id"], "prompt": r["prompt"], "reference": r["reference"], "a": r["a"], "b": r["b"],
             "metric": metric, "score_a": r["scores"]["a"][metric], "score_b": r["scores"]["b"][metric]}
            for r in ranked]


def _record_compare(ws, ta: Target, tb: Target, evalset: EvalSet, result: dict, paths: list[Path]) -> None:
    entry = {"time": _now(), "against": ta.version, "eval_set": evalset.name, "eval_set_sha256": evalset.sha256,
             "artifact": ta.artifact, "n": result["n"], "report": result["report"],
             "metrics": {k: {f: v[f] for f in ("a", "b", "diff", "ci", "p_value", "verdict")}
                         for k, v in result["metrics"].items()}}

    def update(lock):
        for t, side in ((ta, "a"), (tb, "b")):
            if t.version == "base":
                continue
            v = lock.state(t.model).versions[t.version]
            v.metrics.update({metric_key(k, evalset.name, t.artifact): m[side] for k, m in result["metrics"].items()
                              if not hasattr(plugins.get("evaluator", k), "pairwise")})  # judge shares are relative
        if tb.version != "base":
            lock.state(tb.model).versions[tb.version].evals.append(entry)

    ws.record(f"eval {ta.model} {ta.version} vs {tb.version} ({ta.artifact}, {evalset.name})", update, add=paths)


# --- the gate -----------------------------------------------------------------------------------


def check_gate(comparison: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """Does ``b`` beat ``a`` enough? ``{"passed", "metric", "reasons": [...]}`` (never raises)."""
    alpha = 1 - gate.confidence
    reasons = []
    m = comparison["metrics"].get(gate.metric)
    if m is None:
        reasons.append(f"gate metric {gate.metric} was not measured (add it to eval.metrics)")
    else:
        sign = 1 if m.get("higher_is_better", True) else -1
        improvement = sign * m["diff"]
        if improvement <= 0 or m["p_value"] >= alpha:
            reasons.append(f"{gate.metric}: {m['b']:.4g} vs {m['a']:.4g} is not a significant improvement "
                           f"(diff {m['diff']:+.4g}, p={m['p_value']:.3g}, needs p<{alpha:.3g})")
        elif improvement < gate.min_improvement:
            reasons.append(f"{gate.metric}: improved by {improvement:.4g}, less than min_improvement "
                           f"{gate.min_improvement:g}")
    for g in gate.guards:
        gm = comparison["metrics"].get(g)
        if gm is None:
            reasons.append(f"guard metric {g} was not measured (add it to eval.metrics)")
            continue
        sign = 1 if gm.get("higher_is_better", True) else -1
        if sign * gm["diff"] < 0 and gm["p_value"] < alpha:
            reasons.append(f"guard {g} got significantly worse ({gm['a']:.4g} -> {gm['b']:.4g}, p={gm['p_value']:.3g})")
    return {"passed": not reasons, "metric": gate.metric, "a": comparison["a"], "b": comparison["b"],
            "reasons": reasons}


def default_baseline(ws, model: str, gate: GateConfig) -> str:
    """What a candidate must beat: gate.against (stable by default), else the base model."""
    try:
        return resolve(ws.read_lock(), model, gate.against)
    except UsageError:
        return "base"


def gated_compare(ws, candidate: str, *, against: str | None = None, model: str | None = None,
                  record: bool = True, log: Log = print, **kwargs) -> dict[str, Any]:
    """Compare ``candidate`` with its baseline and apply eval.gate; the verdict is ``result["gate"]``."""
    m, _ = split_ref(candidate, model or ws.config.default_model)
    cfg = ws.model(m)
    baseline = against or default_baseline(ws, m, cfg.eval.gate)
    result = compare(ws, baseline, candidate, model=m, record=record, log=log, **kwargs)
    result["gate"] = check_gate(result, cfg.eval.gate)
    return result


def gate_error(result: dict[str, Any]) -> GateFailed:
    reasons = result["gate"]["reasons"]
    more = f"; +{len(reasons) - 1} more reason(s)" if len(reasons) > 1 else ""
    return GateFailed(f"gate failed for {result['model']}@{result['b']} against {result['a']}: {reasons[0]}",
                      hint=f"report: {result['report']}{more}")


def gate(ws, candidate: str, **kwargs) -> dict[str, Any]:
    """:func:`gated_compare` that raises GateFailed (exit code 5) when the gate fails.

    Deploy and cycle call this (under their run lock), so every path applies the same rule.
    """
    result = gated_compare(ws, candidate, **kwargs)
    if not result["gate"]["passed"]:
        raise gate_error(result)
    return result


def chat_backend(ws, ref: str, *, model: str | None = None, artifact: str | None = None) -> tuple[Target, Any]:
    """(target, loaded backend) for `ftctl chat`."""
    target = resolve_target(ws, ref, model=model, artifact=artifact)
    return target, open_backend(ws, target)
