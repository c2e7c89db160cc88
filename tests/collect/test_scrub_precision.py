"""Scrubbing keeps clinical data meaningful (issue 20): codes, drug and disease names survive,
real identifiers and names still go, and bad keep patterns or pathological input fail closed.

The precision figures on a corpus nobody here wrote are benchmarks/phi_precision.py's; these
tests pin behaviour.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from ftctl.errors import ConfigError
from ftctl.lib import keep
from ftctl.lib.scrub import ScrubError, Scrubber


@pytest.fixture(scope="module")
def scrubber(tmp_path_factory):
    return Scrubber(cache_dir=tmp_path_factory.mktemp("cache"))


def scrub(s: Scrubber, text: str) -> str:
    return s.scrub(text, Counter())


@pytest.mark.parametrize("text", [
    "I70.302",                                      # was <DRIVER_LICENSE>.302
    "Parkinson disease G20",                        # kept its name, lost its code
    "T36.0X1A Poisoning by penicillins, accidental (unintentional), initial encounter",
    "0DTJ4ZZ Resection of Appendix, Percutaneous Endoscopic Approach",
    "J1100", "E0601", "CPT 99213", "3074F", "LOINC 4548-4", "2345-7", "NDC 0002-3227-30",
    "Vitamin B12 1000 mcg IM monthly",
    "Metformin 500 mg PO BID; recheck HbA1c 7.2 % in 3 months",
    "Prior authorization is required; the EOB shows the deductible and copay.",
])
def test_domain_codes_and_values_are_kept(scrubber, text):
    assert scrub(scrubber, text) == text


@pytest.mark.parametrize("text, expected", [
    ("Her driver's license is D1234567", "<DRIVER_LICENSE>"),   # labelled: a licence
    ("DL number D1234567 expires soon", "<ID_NUMBER>"),       # a labelled identifier
    ("SSN 536-22-8890, code I70.302", "SSN <SSN>, code I70.302"),
    ("call 415-555-0132 about J1100", "call <PHONE> about J1100"),
    ("zip code 62704-1234", "<ZIP>"),                            # ZIP+4 is not an NDC
])
def test_identifiers_still_go_next_to_codes(scrubber, text, expected):
    out = scrub(scrubber, text)
    assert expected in out
    for secret in ("D1234567", "536-22-8890", "555-0132", "62704"):
        assert secret not in out


def test_an_invalid_code_of_a_kept_shape_is_not_kept():
    assert keep._valid("icd10cm", "I70.302") and keep._valid("icd10cm", "G20")
    assert not keep._valid("icd10cm", "Q99.999") and not keep._valid("icd10cm", "D12.3456")
    assert keep.luhn_digit("4548") == 4 and keep.luhn_digit("2345") == 7
    assert not keep._valid("loinc", "2345-8")


def test_a_teams_own_keep_pattern(tmp_path):
    text = "Ship part PRD-100200300400 today"
    plain = Scrubber(names=False, cache_dir=tmp_path)
    assert "100200300400" not in scrub(plain, text)  # a 12-digit run is an identifier by default
    kept = Scrubber(names=False, cache_dir=tmp_path, keep=[r"PRD-[0-9]{12}"])
    assert scrub(kept, text) == text
    assert kept.describe()["keep"]["site"] == [r"PRD-[0-9]{12}"]


@pytest.mark.parametrize("bad", ["PRD-([0-9]", "(?P<x", "a**", ""])
def test_a_bad_keep_pattern_is_a_config_error_naming_the_key(workspace, bad):
    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    cfg = y.load(workspace.config_path.read_text())
    cfg["curate"] = {"scrub": {"keep": ["SKU-[0-9]{6}", bad]}}
    with open(workspace.config_path, "w") as f:
        y.dump(cfg, f)
    workspace.__dict__.pop("loaded", None)
    with pytest.raises(ConfigError, match=r"curate\.scrub\.keep: \[1\]: ") as e:
        workspace.model("assistant")
    assert "regex" in str(e.value) or "empty" in str(e.value)
    with pytest.raises(ConfigError, match=r"curate\.scrub\.keep\[0\]"):
        keep.compile_user([bad])


# --- names ---------------------------------------------------------------------------------


def test_medical_words_are_never_a_person(scrubber):
    if scrubber.active_types and "PERSON" not in scrubber.active_types:
        pytest.skip("no NER model installed: no PERSON to keep from firing")
    assert scrubber.vocabulary is not None, "the phi extra's vocabulary packages are missing"
    for text in ["Pulmonary heart disease", "Hodgkin lymphoma, unspecified", "Crohn's disease of small intestine",
                 "Alzheimer's disease with late onset", "Parkinson's disease", "Parkinson disease G20",
                 "Atorvastatin 40 mg at bedtime", "Kaposi's sarcoma of skin", "Graves disease"]:
        assert "<PERSON>" not in scrub(scrubber, text), text


def test_real_names_still_go(scrubber, tmp_path):
    """Every Faker name that NER catches without the vocabulary is still caught with it: the
    vocabulary removes no real name (Wilson, Graves, Bell are names too)."""
    if "PERSON" not in scrubber.active_types:
        pytest.skip("no NER model installed")
    from faker import Faker

    fake = Faker("en_US")
    Faker.seed(20)
    bare = Scrubber(cache_dir=tmp_path)
    bare.analyze("warm up")
    bare.vocabulary = None
    texts = [f"Please ask {fake.name()} to call back about the claim." for _ in range(60)]
    texts += ["Dr. Wilson reviewed the chart.", "Mr. Graves called twice.", "Ms. Bell signed the form."]
    lost = [t for t in texts if "<PERSON>" in scrub(bare, t) and "<PERSON>" not in scrub(scrubber, t)]
    assert not lost
    assert sum("<PERSON>" in scrub(scrubber, t) for t in texts) >= 40  # NER finds most of them


def test_the_drug_dictionary_is_read_as_data_only(tmp_path):
    import bz2
    import pickle

    from ftctl.lib import medical_vocab

    assert len(medical_vocab.drug_names()) > 10_000
    evil = tmp_path / "evil.pkl.bz2"
    with bz2.open(evil, "wb") as f:
        pickle.dump({"x": Counter()}, f)  # names a class: the restricted unpickler refuses it
    with bz2.open(evil, "rb") as f, pytest.raises(pickle.UnpicklingError, match="refused collections.Counter"):
        medical_vocab._DataOnly(f).load()


# --- bad input -----------------------------------------------------------------------------


def test_a_keep_pattern_that_times_out_keeps_nothing(tmp_path, monkeypatch):
    """A real catastrophic pattern on a real input (no stub): the keep pattern gives up after its
    limit and the code is scrubbed as if it were not there (fail closed)."""
    monkeypatch.setattr(keep, "TIMEOUT_S", 0.2)
    evil = r"(?:a|aa)+b"  # exponential backtracking on a run of a's without a b
    text = "Driver license D1234567, note " + "a" * 60
    t0 = time.monotonic()
    found, timed_out = keep.spans(text, keep.compile_user([evil]))
    assert timed_out == ["curate.scrub.keep[0]"] and found == []
    assert time.monotonic() - t0 < 30


@pytest.mark.timeout(600)
def test_a_recognizer_that_times_out_fails_closed_on_a_real_pathological_input(tmp_path, workspace):
    """A site recognizer with catastrophic backtracking, on input built to trigger it: the row is
    rejected (scrub_error), never kept unscrubbed, and collect finishes."""
    import json

    from ftctl.data.collect import collect
    from tests.collect.conftest import configure, event, write_jsonl

    site = workspace.root / "site.yaml"
    site.write_text("recognizers:\n  - name: evil\n    supported_entity: EVIL_ID\n    patterns:\n"
                    "      - {name: nested, regex: '(?:a|aa)+b', score: 0.9}\n")
    s = Scrubber(names=False, cache_dir=tmp_path, recognizers=site)
    with pytest.raises(ScrubError, match="timed out"):
        s.analyze("a" * 60 + " and more")
    rows = [event(f"Question {i}?", f"Answer {i}.", i=i) for i in range(5)]
    rows.append(event("Question 9? " + "a" * 60, "SSN 536-22-8890", i=9))
    write_jsonl(workspace.root / "feedback" / "e.jsonl", rows)
    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}],
              {"scrub": {"enabled": True, "names": False, "recognizers": "site.yaml"}})
    with workspace.run_lock("test"):
        r = collect(workspace, "assistant", log=lambda *_: None)
    assert r["rejected"] == {"scrub_error": 1} and r["kept"] == 5
    texts = "".join(p.read_text() for p in workspace.data_dir("assistant").glob("*.jsonl"))
    assert "536-22-8890" not in texts
    assert [json.loads(x)["reason"] for x in (workspace.data_dir("assistant") / "rejects.jsonl").read_text().splitlines()] \
        == ["scrub_error"]


def _crafted() -> dict[str, str]:
    """Inputs built against the shapes the patterns look for: long runs of what they repeat."""
    return {
        "capitalised words": "Main " * 3000 + "Street",
        "street words": "1 " + "Oak Street and " * 1500 + "Apt",
        "letters and digits": "A1" * 8000,
        "digits and separators": "1-2 " * 4000,
        "dotted": "a." * 8000 + "com",
        "at signs": "a@" * 8000,
        "spaces in numbers": "1 " * 8000,
        "labels": "member id " * 1500 + "A1",
        "codes": "I70.302 " * 2000,
        "url-ish": "http://" + "a/" * 8000,
    }


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(_crafted()))
def test_crafted_input_against_every_pattern_finishes(tmp_path_factory, name):
    """Each input goes through every pattern recognizer and keep pattern in 4,000-character
    windows, each regex under its time limit: it ends, scrubbed or rejected, never hanging."""
    s = Scrubber(names=False, cache_dir=tmp_path_factory.getbasetemp() / "crafted-cache")
    text = _crafted()[name]
    t0 = time.monotonic()
    try:
        s.scrub(text, Counter())
    except ScrubError:
        pass  # fail closed: the row would be rejected
    assert time.monotonic() - t0 < 300
