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
    lines = [l for l in text.splitlines() if "cycle >>" in l]
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
