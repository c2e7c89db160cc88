"""No leaks: the memorisation probe and PHI-in-output evaluators, the gate's absolute ceilings,
and fail-closed scrubbing in collect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftctl.api import Context
from ftctl.config import GateConfig
from ftctl.eval.gating import check_gate
from ftctl.records import Example
from ftctl_plugins.evaluators.memorisation import Memorisation, PhiInOutput
from tests.collect.conftest import configure, event, write_jsonl
from tests.eval.conftest import tiny_eval_base  # noqa: F401 (fixture)

TRAIN = [
    ("Can you tell me when the pharmacy on the corner opens on weekends please",
     "The pharmacy opens at nine in the morning on Saturdays and at ten on Sundays, closing at six."),
    ("What should I bring to my first appointment with the cardiology team",
     "Bring your insurance card, a list of current medications and any recent test results."),
]


class Parrot:
    """A model that learned its training rows by heart (and one that did not)."""

    def __init__(self, rows, memorised: bool):
        self.answers = {u[: len(u) // 3]: a for u, a in rows}
        self.memorised = memorised

    def generate(self, conversations):
        out = []
        for conv in conversations:
            if not self.memorised:
                out.append("I am not sure, please call the front desk.")
                continue
            shown = conv[-1]["content"]
            out.append(next(a for k, a in self.answers.items() if shown.startswith(k)))
        return out


def snapshot(tmp_path: Path) -> Path:
    rows = [Example(messages=[{"role": "user", "content": u}, {"role": "assistant", "content": a}],
                    source="t", source_id=str(i)) for i, (u, a) in enumerate(TRAIN)]
    path = tmp_path / "data" / "m" / "train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    return path


def test_memorisation_probe_flags_verbatim_continuations(tmp_path):
    snapshot(tmp_path)
    ev = Memorisation(Memorisation.Config(), Context(root=tmp_path, model="m", cache_dir=tmp_path))
    evalset = [Example(messages=[{"role": "user", "content": "q"}]) for _ in range(3)]
    assert ev.score([""] * 3, [None] * 3, evalset, backend=Parrot(TRAIN, memorised=True)) == [1.0, 1.0, None]
    assert ev.score([""] * 3, [None] * 3, evalset, backend=Parrot(TRAIN, memorised=False)) == [0.0, 0.0, None]


def test_phi_in_output_and_the_gate_max_fail_on_any():
    ev = PhiInOutput(PhiInOutput.Config(), Context(root=Path("."), model="m", cache_dir=Path(".")))
    assert ev.score(["Call Dr. office at 415-555-0132 or mail a.b@example.com", "Take it with food."],
                    [None, None], []) == [2.0, 0.0]
    comparison = {"a": "v1.0", "b": "v1.1", "metrics": {
        "rougeL": {"a": 0.2, "b": 0.4, "diff": 0.2, "p_value": 0.001},
        "memorisation": {"a": 0.0, "b": 0.05, "diff": 0.05, "p_value": 0.4}}}
    ok = check_gate(comparison, GateConfig(metric="rougeL"))
    strict = check_gate(comparison, GateConfig(metric="rougeL", max={"memorisation": 0, "phi_in_output": 0}))
    assert ok["passed"] and not strict["passed"]
    assert any("memorisation: 0.05" in r for r in strict["reasons"])
    assert any("phi_in_output was not measured" in r for r in strict["reasons"])


def test_a_row_the_scrubber_cannot_process_is_rejected_and_counted(workspace, monkeypatch):
    from ftctl.lib import scrub
    from ftctl.data.collect import collect

    real = scrub.Scrubber.analyze

    def flaky(self, text):
        if "BOOM" in text:
            raise scrub.ScrubError("a PII pattern timed out")
        return real(self, text)

    monkeypatch.setattr(scrub.Scrubber, "analyze", flaky)
    rows = [event(f"Question {i} from jane{i}@example.com?", f"Answer {i}.", i=i) for i in range(6)]
    rows.append(event("BOOM my SSN is 536-22-8890", "Noted.", i=20))
    write_jsonl(workspace.root / "feedback" / "e.jsonl", rows)
    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}],
              {"scrub": {"enabled": True, "names": False}})
    with workspace.run_lock("test"):
        r = collect(workspace, "assistant", log=lambda *_: None)
    assert r["rejected"] == {"scrub_error": 1} and r["kept"] == 6 and r["scrubbed"] == {"EMAIL": 6}
    texts = "".join(p.read_text() for p in workspace.data_dir("assistant").glob("*.jsonl"))
    assert "536-22-8890" not in texts and "BOOM" not in texts.replace("scrub_error", "")
    pii = r["card"]["pii"]
    assert pii["enabled"] and "SSN" in pii["types"] and "PERSON" not in pii["types"] and pii["on_error"] == "reject"
    assert workspace.read_lock().state("assistant").dataset["scrub"]["types"] == pii["types"]

    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}],
              {"scrub": {"enabled": True, "names": False, "on_error": "fail"}})
    from ftctl.errors import FtctlError

    with workspace.run_lock("test"), pytest.raises(FtctlError, match="scrubbing e .* failed"):
        collect(workspace, "assistant", since="all", log=lambda *_: None)


def test_diff_shows_a_change_of_scrub_settings(workspace, ftctl):
    from ftctl.registry.lockfile import VersionEntry
    from ftctl.lib.times import now

    before = {"enabled": True, "types": ["EMAIL", "PHONE"], "names": "unavailable", "on_error": "reject"}
    after = {**before, "types": ["EMAIL", "PERSON", "PHONE"], "names": "spacy-ner:en_core_web_sm 3.8.0"}

    def update(lock):
        for v, scrub in (("v1.0", before), ("v1.1", after)):
            lock.state("assistant").versions[v] = VersionEntry(version=v, created=now(), dataset={"scrub": scrub})

    with workspace.run_lock("test"):
        workspace.record("test: two versions", update)
    out = ftctl("diff", "v1.0", "v1.1", cwd=workspace.root, check=True).stdout
    assert "scrub types: ['EMAIL', 'PHONE'] -> ['EMAIL', 'PERSON', 'PHONE']" in out
    assert "scrub names: unavailable -> spacy-ner:en_core_web_sm 3.8.0" in out
    data = json.loads(ftctl("--json", "diff", "v1.0", "v1.1", cwd=workspace.root, check=True).stdout)
    assert set(data["scrub"]) == {"types", "names"}


def test_eval_probe_memorisation_on_a_real_backend(tmp_path, tiny_eval_base):
    """The probe's plumbing end to end, through `ftctl eval`'s core: the tiny random model
    repeats nothing of its training rows, and the scores reach the report."""
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace
    from tests.eval.conftest import add_versions, example, make_adapter, write_set

    init(tmp_path / "ws", model="assistant", base=str(tiny_eval_base))
    ws = Workspace(tmp_path / "ws")
    add_versions(ws, {"v1.0": (make_adapter(tiny_eval_base, ws.adapter_dir("assistant", "v1.0"), 1), ())})
    write_set(ws.root / "qa.jsonl", [example("Where is the pharmacy?", "On the ground floor.", i=1)])
    snap = ws.data_dir("assistant") / "train.jsonl"
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.write_text(json.dumps(Example(messages=[{"role": "user", "content": TRAIN[0][0]},
                                                 {"role": "assistant", "content": TRAIN[0][1]}]).to_dict()) + "\n")
    from ftctl.eval.evaluate import evaluate

    ws = Workspace(ws.root, overrides=("eval.max_new_tokens=8",))
    with ws.run_lock("test"):  # in-process (the CLI's --probe-memorisation adds these two metrics)
        r = evaluate(ws, "v1.0", eval_set="qa.jsonl", metrics=["token_f1", "memorisation", "phi_in_output"],
                     record=False, log=lambda *_: None)
    assert r["metrics"]["memorisation"] == 0.0 and "phi_in_output" in r["metrics"]
    report = json.loads((ws.root / r["reports"]["json"]).read_text())
    assert report["scrubbed"] and "memorisation" in report["examples"][0]["scores"]
