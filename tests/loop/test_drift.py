"""`ftctl drift` and the cycle's retrain on a rating drop (tiny model, jsonl feedback)."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from ruamel.yaml import YAML

from ftctl.data.drift import ngrams, novelty
from tests.conftest import run_ftctl, run_json

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def rows(path, items):
    with open(path, "a") as f:
        for r in items:
            f.write(json.dumps(r) + "\n")


def old_rows(n):
    return [{"conversation_id": f"o{i}", "prompt": f"Where is my order number {i}?",
             "response": f"Order {i} ships tomorrow.", "rating": 5, "agent": "support",
             "created_at": f"2024-03-{1 + i // 24:02d}T{i % 24:02d}:00:00Z"} for i in range(n)]


def new_rows(tag, n, rating, served="assistant@v1.0", agent="support", prompt=None):
    now = datetime.now(timezone.utc)
    return [{"conversation_id": f"{tag}{i}", "prompt": (prompt or "Where is my order number {i}?").format(i=i),
             "response": f"Answer {tag}{i}.", "rating": rating[i % len(rating)], "agent": agent,
             "served_model": served, "created_at": (now + timedelta(milliseconds=i)).isoformat()}
            for i in range(n)]


@pytest.fixture
def loop_ws(workspace, tiny_base):
    y = YAML(typ="safe", pure=True)
    cfg = y.load(workspace.config_path.read_text())
    cfg["base"] = str(tiny_base)
    cfg["sources"] = [{"name": "events", "kind": "jsonl", "path": "feedback.jsonl"}]
    cfg["curate"] = {"min_rating": 4, "split": {"val": 0.1, "test": 0.2}, "scrub": {"enabled": False}}
    cfg["train"] = {"trainer": "lora", "lora": {"r": 4, "alpha": 8, "batch_size": 4, "max_length": 128,
                                                "precision": "fp32", "learning_rate": 1e-3}}
    cfg["eval"] = {"metrics": ["exact_match", "token_f1"], "max_new_tokens": 4, "bootstrap": 200, "limit": 8,
                   "gate": {"metric": "token_f1", "min_improvement": -1.0, "confidence": 0.5}}
    cfg["cycle"] = {"min_new_examples": 10, "export": False, "deploy": False, "drift": {"min_rated": 20}}
    with open(workspace.config_path, "w") as f:
        y.dump(cfg, f)
    subprocess.run(["git", "commit", "-qam", "configure"], cwd=workspace.root, check=True)
    rows(workspace.root / "feedback.jsonl", old_rows(40))
    return workspace


def test_novelty_counts_unseen_ngrams():
    assert ngrams("Where is my order?", 3) == {("where", "is", "my"), ("is", "my", "order")}
    assert novelty(["where is my order"], ["where is my order"], 2) == 0.0
    assert novelty(["where is my order"], ["cancel my gym membership"], 2) == 1.0
    assert novelty(["a b"], [], 2) is None


def test_drift_report_and_a_stable_rating_drop_retrains_below_min_new_examples(loop_ws):
    ws, root = loop_ws, loop_ws.root
    first = run_ftctl("--json", "cycle", "--max-steps", "1", cwd=root)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["drift"] is None  # nothing trained yet to compare with

    def stable(lock):
        lock.state("assistant").deployment.stable = "v1.0"

    with ws.run_lock("test"):
        ws.record("test: v1.0 serves", stable)
    rows(root / "feedback.jsonl", new_rows("a", 30, [5, 4, 5]))  # users like v1.0 ...
    run_json("collect", cwd=root)
    # ... then new users arrive: other agents, longer, unfamiliar questions, rated low
    rows(root / "feedback.jsonl", new_rows("b", 30, [1, 2, 2], agent="billing",
                                           prompt="Why was my credit card charged twice for invoice {i} in March?"))

    report = run_json("drift", cwd=root)
    assert report["reference"]["version"] == "v1.0" and report["new"]["rows"] == 60
    assert report["prompt_length"]["drifted"] and report["prompt_length"]["new"]["mean"] > \
        report["prompt_length"]["reference"]["mean"]
    assert report["agents"]["drifted"] and report["agents"]["new"] == {"support": 0.5, "billing": 0.5}
    assert report["novelty"]["drifted"] and report["novelty"]["new"] > report["novelty"]["baseline"]
    v10 = report["ratings"]["v1.0"]
    assert v10["before"]["n"] == 30 and v10["after"]["n"] == 30 and v10["verdict"] == "worse"
    assert report["stable_drop"] and report["retrain"]
    assert set(report["drifted"]) == {"prompt_length", "agents", "novelty", "ratings"}
    human = run_ftctl("drift", cwd=root, env={"COLUMNS": "200"})
    assert human.returncode == 0 and "retrains now" in human.stdout

    # the new rows are rated below min_rating: too few new training examples, but the drop retrains
    y = YAML(typ="safe", pure=True)
    cfg = y.load(ws.config_path.read_text())
    cfg["cycle"]["min_new_examples"] = 1000
    with open(ws.config_path, "w") as f:
        y.dump(cfg, f)
    proc = run_ftctl("--json", "cycle", "--max-steps", "1", cwd=root)
    assert proc.returncode in (0, 5), proc.stderr[-2000:]  # 5: recorded, the gate said no
    assert "retraining" in proc.stderr
    from ftctl.registry.workspace import Workspace

    assert "v1.1" in Workspace(root).read_lock().state("assistant").versions
    card = json.loads((root / "data" / "assistant" / "card.json").read_text())
    assert card["drift"]["retrain"] is True and card["drift"]["ratings"]["v1.0"]["verdict"] == "worse"
