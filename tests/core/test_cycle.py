"""`ftctl cycle` end to end on a tiny model: collect -> train -> eval (gate) -> export off.

Through the real CLI, as cron runs it: exit 0 with a new version, 3 with nothing new, 4 while
another run holds the lock, 5 when the gate fails (the version stays recorded, not exported).
"""

from __future__ import annotations

import json
import subprocess

import pytest
from ruamel.yaml import YAML

from tests.conftest import hold_run_lock, run_ftctl

pytestmark = pytest.mark.slow


def feedback(path, start, n):
    with open(path, "a") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"conversation_id": f"c{i}", "prompt": f"What is {i} plus {i}?",
                                "response": f"{i} plus {i} is {2 * i}.", "rating": 5,
                                "created_at": f"2024-03-{1 + i // 24:02d}T{i % 24:02d}:00:00Z"}) + "\n")


@pytest.fixture
def cycle_ws(workspace, tiny_base):
    y = YAML(typ="safe", pure=True)
    cfg = y.load(workspace.config_path.read_text())
    cfg["base"] = str(tiny_base)
    cfg["sources"] = [{"name": "events", "kind": "jsonl", "path": "feedback.jsonl"}]
    cfg["curate"] = {"min_rating": 4, "split": {"val": 0.1, "test": 0.2}}
    cfg["train"] = {"trainer": "lora", "lora": {"r": 4, "alpha": 8, "batch_size": 4, "max_length": 128,
                                                "precision": "fp32", "learning_rate": 1e-3}}
    cfg["eval"] = {"metrics": ["exact_match", "token_f1"], "max_new_tokens": 8, "bootstrap": 200,
                   "gate": {"metric": "token_f1", "min_improvement": 0.0}}
    cfg["cycle"] = {"min_new_examples": 10, "export": False, "deploy": False}
    with open(workspace.config_path, "w") as f:
        y.dump(cfg, f)
    subprocess.run(["git", "commit", "-qam", "configure"], cwd=workspace.root, check=True)
    feedback(workspace.root / "feedback.jsonl", 0, 40)
    return workspace


def test_cycle_trains_then_has_nothing_to_do_then_gates(cycle_ws):
    root = cycle_ws.root
    first = run_ftctl("--json", "cycle", "--max-steps", "2", cwd=root)
    assert first.returncode == 0, first.stderr[-3000:]
    out = json.loads(first.stdout)
    assert out["version"] == "v1.0" and out["new_examples"] >= 10
    assert out["steps"]["collect"]["kept"] == 40
    assert "metrics" in out["steps"]["eval"]  # the first version has nothing to beat: just measured
    lock = cycle_ws.read_lock().state("assistant")
    assert set(lock.versions) == {"v1.0"} and lock.versions["v1.0"].metrics

    again = run_ftctl("--json", "cycle", "--max-steps", "2", cwd=root)
    assert again.returncode == 3 and "new training example" in again.stderr
    quiet = json.loads(again.stdout)  # the error, and what the cycle did before it stopped
    assert quiet["exit_code"] == 3 and quiet["result"]["new_examples"] == 0
    assert quiet["result"]["drift"]["reference"]["version"] == "v1.0" and "collect" in quiet["result"]["steps"]

    feedback(root / "feedback.jsonl", 40, 30)
    strict = run_ftctl("--set", "eval.gate.min_improvement=1.0", "--json", "cycle", "--max-steps", "2", cwd=root)
    assert strict.returncode == 5, strict.stderr[-3000:]
    assert "gate failed" in strict.stderr and "not exported or deployed" in strict.stderr
    assert json.loads(strict.stdout)["result"]["steps"]["eval"]["gate"] == "failed"
    assert set(cycle_ws.read_lock().state("assistant").versions) == {"v1.0", "v1.1"}
    assert not (root / "exports").exists()


def test_cycle_while_locked_exits_4(cycle_ws):
    holder = hold_run_lock(cycle_ws.root, 30)
    try:
        proc = run_ftctl("cycle", cwd=cycle_ws.root)
        assert proc.returncode == 4 and "`train`" in proc.stderr
    finally:
        holder.kill()
        holder.wait()


def test_install_cron_writes_one_entry(workspace, tmp_path):
    tab = tmp_path / "crontab"
    tab.write_text("# someone else's job\n0 1 * * * /bin/true\n")
    for _ in range(2):  # idempotent: replaces its own entry
        assert run_ftctl("cycle", "--install-cron", "--crontab-file", str(tab), cwd=workspace.root).returncode == 0
    text = tab.read_text()
    assert "0 1 * * * /bin/true" in text
    lines = [l for l in text.splitlines() if "cycle --all >>" in l]
    assert len(lines) == 1 and lines[0].startswith("0 3 * * * ") and f"-C {workspace.root}" in lines[0]
    bad = run_ftctl("--set", "cycle.schedule=every night", "cycle", "--install-cron", "--crontab-file", str(tab),
                    cwd=workspace.root)
    assert bad.returncode == 2 and "not a cron expression" in bad.stderr


def test_train_collects_first_when_configured(cycle_ws):
    proc = run_ftctl("--set", "curate.collect_before_train=true", "--json", "train", "--max-steps", "1",
                     cwd=cycle_ws.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = cycle_ws.read_lock().state("assistant")
    assert state.dataset["rows"]["train"] > 0  # collected by train itself
    assert state.versions["v1.0"].dataset["md5"] == state.dataset["md5"]


def test_cycle_all_runs_every_model_and_records_each_outcome(cycle_ws, tmp_path):
    """Three agents, one schedule: `support` trains, `sales` has too little feedback, `billing`'s
    database is unreachable tonight. Each is recorded; the failure does not stop the others."""
    from prometheus_client import CollectorRegistry, generate_latest

    from ftctl.serve.jobs import JobStore
    from ftctl.serve.metrics import FtctlCollector

    root = cycle_ws.root
    y = YAML(typ="safe", pure=True)
    cfg = y.load(cycle_ws.config_path.read_text())
    feedback(root / "sales.jsonl", 100, 3)
    cfg["models"] = {
        "assistant": {},
        "billing": {"sources": [{"name": "db", "kind": "postgres", "table": "feedback", "connect_timeout": 1,
                                 "dsn": "postgresql://ftctl@127.0.0.1:1/none"}]},
        "sales": {"sources": [{"name": "events", "kind": "jsonl", "path": "sales.jsonl"}],
                  "cycle": {"min_new_examples": 20}},
    }
    with open(cycle_ws.config_path, "w") as f:
        y.dump(cfg, f)

    proc = run_ftctl("--json", "cycle", "--all", "--max-steps", "1", cwd=root)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one real failure: the run failed, as a whole
    assert "billing" in proc.stderr and "cannot connect to PostgreSQL" in proc.stderr
    out = json.loads(proc.stdout)["result"]
    models = out["models"]
    assert models["assistant"]["exit_code"] == 0 and models["assistant"]["result"]["version"] == "v1.0"
    assert models["sales"]["exit_code"] == 3 and "cycle.min_new_examples" in models["sales"]["error"]
    assert models["billing"]["exit_code"] == 1 and "cannot connect" in models["billing"]["error"]
    lock = cycle_ws.read_lock()
    assert set(lock.state("assistant").versions) == {"v1.0"} and not lock.state("billing").versions

    status = json.loads(run_ftctl("--json", "status", "--all", cwd=root).stdout)["models"]
    assert status["assistant"]["cycle"]["version"] == "v1.0" and status["assistant"]["cycle"]["ok"]
    assert status["sales"]["cycle"]["exit_code"] == 3 and status["sales"]["cycle"]["ok"]
    assert status["billing"]["cycle"]["exit_code"] == 1 and not status["billing"]["cycle"]["ok"]

    registry = CollectorRegistry()
    registry.register(FtctlCollector(lambda: cycle_ws, JobStore(tmp_path / "jobs.sqlite")))
    text = generate_latest(registry).decode()
    for line in ('ftctl_model_last_cycle_success{model="assistant"} 1.0',
                 'ftctl_model_last_cycle_exit_code{model="sales"} 3.0',
                 'ftctl_model_last_cycle_success{model="billing"} 0.0',
                 "ftctl_last_cycle_exit_code 1.0"):
        assert line in text, line

    # tonight the database answers nothing new and assistant has nothing new: all quiet is exit 3
    cfg["models"]["billing"]["sources"] = [{"name": "events", "kind": "jsonl", "path": "sales.jsonl"}]
    cfg["models"]["billing"]["cycle"] = {"min_new_examples": 20}
    with open(cycle_ws.config_path, "w") as f:
        y.dump(cfg, f)
    quiet = run_ftctl("cycle", "--all", "--max-steps", "1", cwd=root)
    assert quiet.returncode == 3, quiet.stderr[-3000:]
    assert "nothing to do for any of the 3 model(s)" in quiet.stderr


def test_cycle_all_and_model_exclude_each_other(workspace):
    proc = run_ftctl("cycle", "--all", "--model", "assistant", cwd=workspace.root)
    assert proc.returncode == 2 and "exclude each other" in proc.stderr


def test_cycle_continues_latest_on_unseen_rows_and_the_card_says_who_saw_what_first(cycle_ws):
    root = cycle_ws.root
    first = run_ftctl("--set", "cycle.train_from=latest", "--json", "cycle", "--max-steps", "1", cwd=root)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "no such version" in first.stderr  # nothing to continue yet: from the base
    card = json.loads((root / "data" / "assistant" / "card.json").read_text())
    n1 = card["splits"]["train"]
    assert card["first_seen"] == {"not yet trained": n1}

    feedback(root / "feedback.jsonl", 40, 30)
    second = run_ftctl("--set", "cycle.train_from=latest", "--json", "cycle", "--max-steps", "1", cwd=root)
    assert second.returncode in (0, 5), second.stderr[-3000:]  # the gate's verdict on a random model is not the point
    card = json.loads((root / "data" / "assistant" / "card.json").read_text())
    n2 = card["splits"]["train"]
    assert card["first_seen"] == {"v1.0": n1, "not yet trained": n2 - n1}
    v11 = cycle_ws.read_lock().state("assistant").versions["v1.1"]
    assert v11.parent == "v1.0" and v11.training["new_only"]["rows"] == n2 - n1
    trained_on = (root / v11.dataset["train"]).read_text().splitlines()
    assert len(trained_on) == n2 - n1 and all("What is 4" in l or "What is 5" in l or "What is 6" in l
                                              for l in trained_on)  # rows 40..69 only

    feedback(root / "feedback.jsonl", 70, 5)
    assert run_ftctl("collect", cwd=root).returncode == 0
    card = json.loads((root / "data" / "assistant" / "card.json").read_text())
    assert card["first_seen"]["v1.0"] == n1 and card["first_seen"]["v1.1"] == n2 - n1
    assert sum(card["first_seen"].values()) == card["splits"]["train"]

    dry = run_ftctl("--json", "train", "--from", "v1.1", "--new-only", "--dry-run", cwd=root)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert json.loads(dry.stdout)["rows"]["train"] == card["first_seen"]["not yet trained"]
    bad = run_ftctl("train", "--new-only", cwd=root)
    assert bad.returncode == 2 and "needs --from" in bad.stderr


def test_train_from_falls_back_to_base_when_nothing_or_a_forgotten_lineage(workspace):
    from ftctl.cycle import parent_version
    from ftctl.registry import lockfile
    from ftctl.registry.lockfile import Deployment, ModelState, VersionEntry

    said = []
    assert parent_version(workspace, "assistant", "stable", said.append) is None and "no such version" in said[0]
    lock = workspace.read_lock()
    t = "2026-01-01T00:00:00+00:00"
    lock.models["assistant"] = ModelState(
        versions={"v1.0": VersionEntry(version="v1.0", created=t), "v1.1": VersionEntry(version="v1.1", created=t,
                                                                                        parent="v1.0"),
                  "v1.2": VersionEntry(version="v1.2", created=t)},
        deployment=Deployment(stable="v1.1"))
    lockfile.write(workspace.lock_path, lock)
    assert parent_version(workspace, "assistant", "base") is None
    assert parent_version(workspace, "assistant", "stable") == "v1.1"
    assert parent_version(workspace, "assistant", "latest") == "v1.2"
    lock.models["assistant"].history.append({"time": t, "action": "forget", "versions": ["v1.0"]})
    lockfile.write(workspace.lock_path, lock)
    said.clear()
    assert parent_version(workspace, "assistant", "stable", said.append) is None  # v1.1 continued v1.0
    assert "held forgotten data" in said[0]
    assert parent_version(workspace, "assistant", "latest") == "v1.2"  # trained from the base: clean


def _rows(path, rows):
    from datetime import datetime, timezone

    with open(path, "a") as f:
        for i, (prompt, response, extra) in enumerate(rows):
            f.write(json.dumps({"conversation_id": f"{prompt[:12]}-{i}", "prompt": prompt, "response": response,
                                "created_at": datetime.now(timezone.utc).isoformat(), **extra}) + "\n")


def test_triggers_fire_on_negatives_and_drift_and_report_their_evidence(cycle_ws):
    root = cycle_ws.root
    (root / "feedback.jsonl").write_text("")
    _rows(root / "feedback.jsonl", [(f"Tell me a fact about the ocean, fact number {i}", f"Fact {i}: it is wet.",
                                     {"rating": 5}) for i in range(40)])
    assert run_ftctl("cycle", "--max-steps", "1", cwd=root).returncode == 0

    quiet = run_ftctl("--json", "cycle", "--max-steps", "1", cwd=root)
    assert quiet.returncode == 3, quiet.stderr[-3000:]
    fired = json.loads(quiet.stdout)["result"]["triggers"]
    assert set(fired) == {"new_rows", "negatives", "drift", "rating_drop"} and not any(t["fired"] for t in fired.values())
    assert "no trigger fired" in quiet.stderr and "0 negative row(s)" in quiet.stderr
    assert "content drift not measured" in quiet.stderr and "no rating test: nothing stable" in quiet.stderr

    # five angry users asking about something else entirely: too few rows to train on, but
    # negative feedback (at 3) and the content drift both ask for a new version
    _rows(root / "feedback.jsonl", [(f"Translate {w} into French and German, quickly please", "No.",
                                     {"feedback_type": "thumbs_down"} if i % 2 else {"rating": 1})
                                    for i, w in enumerate(["banana", "tree", "house", "river", "cloud"])])
    loud = run_ftctl("--set", "cycle.triggers.negatives=3", "--json", "cycle", "--max-steps", "1", cwd=root)
    assert loud.returncode in (0, 5), loud.stderr[-3000:]
    out = json.loads(loud.stdout)
    fired = (out.get("result") or out)["triggers"]
    assert fired["negatives"]["fired"] and fired["negatives"]["value"] == 5
    assert fired["drift"]["fired"] and fired["drift"]["value"] > 0.25
    assert not fired["new_rows"]["fired"]
    assert "trigger negatives: fired: 5 negative row(s)" in loud.stderr
    assert set(cycle_ws.read_lock().state("assistant").versions) == {"v1.0", "v1.1"}

    bad = run_ftctl("--set", "cycle.triggers.moon_phase=full", "cycle", cwd=root)
    assert bad.returncode == 2 and "unknown trigger signal 'moon_phase'" in bad.stderr
