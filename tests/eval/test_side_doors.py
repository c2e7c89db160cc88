"""PHI nowhere raw (issue 20): what `eval --json` and `eval --compare --json` return, and the
reports they write, quote scrubbed text and hashed example ids only."""

from __future__ import annotations

import json

from ftctl.registry import secret
from tests.eval.conftest import example, write_set
from tests.eval.test_evaluate import FAST, cli

SSN, EMAIL, PHONE = "536-22-8890", "jane.roe@example.com", "415-555-0132"


def phi_set(ws):
    rows = []
    for i in range(4):
        r = example(f"My SSN is {SSN}, can you check claim {i}?", f"Call {PHONE} about claim {i}.", i=i)
        r["conversation_id"] = f"{i}.{EMAIL}"  # conversation keys that are e-mail addresses
        rows.append(r)
    return write_set(ws.root / "phi.jsonl", rows)


def no_raw(text: str) -> None:
    for raw in (SSN, EMAIL, PHONE):
        assert raw not in text, raw


def test_compare_and_eval_json_carry_scrubbed_text_and_hashed_ids(eval_ws, capsys):
    ws = eval_ws
    phi_set(ws)
    code, out, err = cli(capsys, "--json", *FAST, "eval", "--compare", "base", "v1.1", "--eval-set", "phi.jsonl",
                         "--metric", "perplexity", cwd=ws.root)
    assert code == 0, err
    no_raw(out)
    result = json.loads(out)
    assert result["changed"], "the adapter changes perplexity on every row: the examples are shown"
    key = secret.load(ws.root, create=False)
    ids = {secret.report_id(key, f"{i}.{EMAIL}") for i in range(4)}
    assert {c["id"] for c in result["changed"]} <= ids
    assert any("<SSN>" in c["prompt"] for c in result["changed"]) and result["scrubbed"] is True
    for path in result["reports"].values():
        no_raw((ws.root / path).read_text())
    report = json.loads((ws.root / result["reports"]["json"]).read_text())
    assert {e["id"] for e in report["examples"]} == ids  # the same hash in every report: comparable

    code, out, err = cli(capsys, "--json", *FAST, "eval", "v1.1", "--eval-set", "phi.jsonl", "--metric", "rougeL",
                         cwd=ws.root)
    assert code == 0, err
    no_raw(out)
    for path in json.loads(out)["reports"].values():
        no_raw((ws.root / path).read_text())


def test_the_secret_is_private_ignored_and_never_silently_replaced(tmp_path):
    import os
    import stat
    import subprocess

    import pytest

    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace

    init(tmp_path / "ws")
    root = tmp_path / "ws"
    p = secret.path(root)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert subprocess.run(["git", "check-ignore", "-q", str(p)], cwd=root).returncode == 0
    ws = Workspace(root)
    key = ws.secret()
    assert key == secret.load(root) and len(key) == 64

    def tombstone(lock):
        lock.tombstones = [{"kind": "conversation", "sha256": "0" * 64, "secret": secret.fingerprint(key)}]

    with ws.run_lock("test"):
        ws.record("test: a tombstone", tombstone)
    p.unlink()
    with pytest.raises(secret.SecretMissing, match="secret .ftctl-secret is missing") as e:
        Workspace(root).secret()
    assert "copy .ftctl-secret" in e.value.hint
    assert not p.exists()
