"""Incremental training: does continuing v1 on new data forget what v1 learnt?

The data is the quality benchmark's (``benchmarks/quality.py``), split into two halves that a
loop would see on two nights: half A (ISO 3166-2 subdivision codes) arrives first, half B
(what numpy functions do) the next night. Through the real CLI, in one workspace:

- ``v1``: ``ftctl collect`` (A) then ``ftctl train``: from the base on A;
- ``v2 continued``: B collected, ``ftctl train --from v1 --new-only``: v1's adapter trained on B
  only (``cycle.train_from: stable|latest``);
- ``v2 from base``: ``ftctl train`` on the same snapshot: the base trained on A and B
  (``cycle.train_from: base``, the default).

Each version (and the untuned base) answers both halves' held-out questions greedily (ftctl's HF
eval backend). Forgetting is v1's score on A minus a v2's score on A; what a v2 learnt of B is
its B score. Training seconds are the CLI's wall time, both ways on the same machine.

    .venv/bin/python benchmarks/incremental.py [--size tiny|small] [--json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  the data, the scoring and the child-process runner are the quality benchmark's

SIZES = {  # training rows per half, held-out rows per half
    "mini": {"iso": (120, 40), "numpy": (60, 20)},  # minutes on a busy two-core machine (with --set max_steps)
    "tiny": {"iso": (200, 60), "numpy": (100, 30)},
    "small": {"iso": (500, 120), "numpy": (150, 40)},
}
HALVES = {"A": "iso", "B": "numpy"}
METRIC = {"iso": "prefix", "numpy": "rougeL"}  # the headline number per half (exact ISO codes are rare at 135M)


def rows_of(size: str) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    quality.SIZES[f"incremental-{size}"] = SIZES[size]
    train, test = quality.build_rows(f"incremental-{size}")
    return {h: [r for r in train if r["task"] == task] for h, task in HALVES.items()}, test


def append_feedback(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({"messages": quality._chat(r["question"], r["answer"]), "rating": 5,
                                "conversation_id": r["key"]}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override an ftctl setting for every run (e.g. train.lora.epochs=2)")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    work = a.keep or Path(tempfile.mkdtemp(prefix="ftctl-incremental-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    halves, test = rows_of(a.size)
    tests = {h: {HALVES[h]: test[HALVES[h]]} for h in HALVES}
    say(f"half A: {len(halves['A'])} ISO rows, half B: {len(halves['B'])} numpy rows; held out: "
        + ", ".join(f"{k} {len(v)}" for k, v in test.items()) + f"; log {log}")

    ftctl = Path(sys.executable).with_name("ftctl")
    ws = work / "ws"
    (ws / "feedback").mkdir(parents=True)
    feed = ws / "feedback" / "chats.jsonl"
    (ws / "ftctl.yaml").write_text(  # as quality.py: public data, its own held-out split
        "schema: 1\ndefault_model: bench\nbase: smollm2-135m-instruct\nmodels: {bench: {}}\n"
        "sources:\n  - {name: chats, kind: jsonl, path: feedback/chats.jsonl}\n"
        "curate: {min_rating: 4, dedup: \"off\", scrub: {enabled: false}, split: {val: 0.0, test: 0.0}}\n"
        "train: {trainer: lora}\n")
    sets = [x for s in a.sets for x in ("--set", s)]
    quality._run([ftctl, "--json", "init", ws], log=log)

    def cli(*args):
        return quality._run([ftctl, "-C", ws, "--json", *sets, *args], log=log)

    append_feedback(feed, halves["A"])
    cli("collect")
    runs = {}
    say("training v1 on half A (from the base)")
    runs["v1"] = cli("train")
    append_feedback(feed, halves["B"])
    card, _ = cli("collect")
    say("training v2 continued: v1 on half B only (--from v1 --new-only)")
    runs["v2 continued"] = cli("train", "--from", runs["v1"][0]["version"], "--new-only")
    say("training v2 from the base on A and B")
    runs["v2 from base"] = cli("train")
    first_seen = json.loads((ws / "data" / "bench" / "card.json").read_text()).get("first_seen")

    scores = {"base": {}}
    for name, (r, _) in runs.items():
        scores[name] = {}
    for h in HALVES:
        task_file = work / f"test-{h}.json"
        task_file.write_text(json.dumps(tests[h]))
        for name in scores:
            say(f"scoring {name} on half {h}")
            adapter = str(ws / runs[name][0]["adapter"]) if name in runs else None
            out = quality.in_child({"do": "generate", "backend": "hf", "adapter": adapter, "tasks": str(task_file)},
                                   log)
            scores[name][h] = out[HALVES[h]]["metrics"]

    result = {"size": a.size, "rows": {h: len(v) for h, v in halves.items()},
              "held_out": {h: len(test[HALVES[h]]) for h in HALVES}, "first_seen": first_seen,
              "training": {n: {"version": r["version"], "parent": r["parent"], "steps": r["steps"],
                               "seconds": round(s, 1)} for n, (r, s) in runs.items()},
              "scores": scores}
    v1a = scores["v1"]["A"][METRIC["iso"]]
    result["forgetting"] = {n: round(v1a - scores[n]["A"][METRIC["iso"]], 1) for n in ("v2 continued", "v2 from base")}
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(table(result))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


def table(r: dict) -> str:
    cols = [("A", "iso", "prefix"), ("A", "iso", "exact"), ("B", "numpy", "rougeL"), ("B", "numpy", "token_f1")]
    lines = [f"{'version':14} {'trained on':26} {'steps':>5} {'sec':>5} "
             + " ".join(f"{h + ' ' + m:>12}" for h, _, m in cols)]
    what = {"base": "-", "v1": "A, from base", "v2 continued": "B only, from v1", "v2 from base": "A+B, from base"}
    for name, s in r["scores"].items():
        t = r["training"].get(name, {})
        lines.append(f"{name:14} {what[name]:26} {t.get('steps', '-'):>5} {t.get('seconds', '-'):>5} "
                     + " ".join(f"{s[h][m]:12.1f}" for h, _, m in cols))
    f = r["forgetting"]
    lines.append(f"forgetting of A (v1's ISO prefix minus the v2's): continued {f['v2 continued']:+.1f} points, "
                 f"from base {f['v2 from base']:+.1f} points")
    lines.append(f"first seen (data card): {r['first_seen']}")
    lines.append("goal: forgetting: none set (issue 23 asked for the number, to choose cycle.train_from by)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
