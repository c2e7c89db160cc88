"""Done means (issue 20): a code-answering set goes through the default collect (scrubbing on, every
default) and training, and no trained answer is a placeholder.

The feedback is a clinical coding assistant's: questions carry a patient's name, a date and a
phone number; answers are ICD-10-CM codes (the shapes Presidio's licence recognizer took for
licences) and eponym diseases (the words spaCy took for names). One answer is a person's name
alone: it must be rejected, not trained on as "<PERSON>".
"""

from __future__ import annotations

import json

import pytest

from ftctl.lib import placeholders
from ftctl.lib.chat_format import IGNORE, encode
from tests.collect.conftest import configure as configure_sources
from tests.collect.conftest import event, write_jsonl
from tests.train.conftest import configure as configure_training

ANSWERS = ["I70.302", "G20", "E11.9", "J45.909", "I10", "K50.90", "C81.90", "G30.1", "M54.50", "F32.A",
           "T36.0X1A", "Z79.4", "Parkinson's disease: G20", "Hodgkin lymphoma, unspecified: C81.90",
           "Crohn's disease of small intestine without complications: K50.00", "Pulmonary heart disease, unspecified: I27.9",
           "Alzheimer's disease with late onset: G30.1", "Vitamin B12 deficiency anemia: D51.9"]


def rows() -> list[dict]:
    out = [event(f"Patient Maria Delgado (DOB 04/12/1961, phone 415-555-0132), visit {i}: which code?",
                 ANSWERS[i % len(ANSWERS)], i=i, rating=5) for i in range(120)]
    out.append(event("Who is the attending physician?", "Amelia Hartwell", i=500, rating=5))
    return out


@pytest.mark.timeout(900)
def test_no_trained_answer_is_a_placeholder(workspace, tiny_base):
    from ftctl.data.collect import collect
    from ftctl.lib.basemodel import load_tokenizer, resolve_base
    from ftctl.train import train

    write_jsonl(workspace.root / "feedback" / "e.jsonl", rows())
    # `scrub: {}`: every scrub default, as a new user has it
    configure_sources(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}], {"scrub": {}})
    assert workspace.model("assistant").curate.scrub.enabled
    configure_training(workspace, tiny_base, max_steps=2)

    with workspace.run_lock("test"):
        card = collect(workspace, "assistant", log=lambda *_: None)["card"]
    assert card["scrub_check"]["findings"] == []
    names_found = "PERSON" in card["pii"]["types"]
    assert card["kept"] == 120 and card["rejected"] == ({"scrubbed_to_placeholders": 1} if names_found else {})

    snapshot = workspace.data_dir("assistant")
    with workspace.run_lock("test"):
        preview = train(workspace, "assistant", preview=True, log=lambda *_: None)
    assert preview["placeholders"]["with_placeholder"] == 0 and preview["placeholders"]["answers"] > 0

    with workspace.run_lock("train"):
        r = train(workspace, "assistant", log=lambda *_: None)
    assert r["steps"] == 2

    # what the trainer learns: the labelled (assistant) tokens of each example it was given
    tok = load_tokenizer(resolve_base(str(tiny_base)))
    trained, prompts = [], []
    for line in (snapshot / "train.jsonl").read_text().splitlines():
        msgs = json.loads(line)["messages"]
        enc = encode(tok, msgs)
        trained.append(tok.decode([t for t in enc.labels if t != IGNORE], skip_special_tokens=True).strip())
        prompts.append(msgs[0]["content"] if msgs[0]["role"] == "user" else msgs[1]["content"])
    assert trained and not [t for t in trained if placeholders.types_in(t)]
    assert set(trained) <= set(ANSWERS)  # every code and disease name as it was answered
    # and the PHI in the questions did go
    assert not [p for p in prompts if "555-0132" in p or "04/12/1961" in p]
    if names_found:
        assert not [p for p in prompts if "Delgado" in p]
