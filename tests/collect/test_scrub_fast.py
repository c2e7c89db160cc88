"""The fast scrubbing path (issue 27) gives byte for byte what the slow one gives.

Fast: the cache of texts seen before, spaCy run over a batch with NER only (lemmas made on demand,
for context words), batches split among forked worker processes. Slow (``reference``): Presidio
runs spaCy's whole pipeline itself, one text at a time. Speed is benchmarks/collect_postgres.py's.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from ftctl.lib.scrub import POOL_MIN, Scrubber, _replace
from tests.conftest import ROOT

LABELLED = ROOT / "tests" / "data" / "pii_labelled.jsonl"


def texts() -> list[str]:
    """The labelled PHI set, PHI-free clinical answers (phi_precision's corpus when its packages
    are here), names in every casing, context-word identifiers, and repeats."""
    rows = [json.loads(x)["text"] for x in LABELLED.read_text().splitlines()]
    names = ["Maria Gonzalez", "john smith", "DR. ALAN TURING", "Ms. Wu", "Parkinson"]
    made = [f"{lead} {n} {tail}" for n in names
            for lead in ("Hi, this is", "please call", "Seen by", "")
            for tail in ("about the refill.", "- member id 88412345", "on 03/04/2021", "")]
    try:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import phi_precision

        clinical = [r["text"] for r in phi_precision.corpus(12, seed=3)]
    except (ImportError, ModuleNotFoundError):  # the phi extra's code lists are not installed
        clinical = []
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return rows + made + clinical + rows[:20] + ["", "  "]


@pytest.fixture(scope="module")
def corpus():
    return texts()


def test_fast_path_is_byte_identical_to_the_slow_path(tmp_path, corpus, monkeypatch):
    from ftctl.lib import scrub

    monkeypatch.setattr(scrub, "WORKER_TASKS", 1)  # each part in a fresh fork: replaced workers work too
    fast = Scrubber(cache_dir=tmp_path, processes=2)
    counts_fast = Counter()
    got = list(fast.scrub_many(corpus, counts_fast, batch_size=512))
    slow = Scrubber(cache_dir=tmp_path, processes=1)
    counts_slow = Counter()
    expected = [_replace(t, slow._analyze_new([t], reference=True)[0], counts_slow) if t.strip() else t
                for t in corpus]
    assert got == expected
    assert counts_fast == counts_slow and counts_slow["PERSON"] >= 10 and len(counts_slow) >= 8
    if "torch" not in sys.modules:  # the pool is not forked from a process that loaded torch
        assert fast._workers is not None
    # one at a time (no pool, no batch) and from the cache: the same again
    assert [fast.scrub(t, Counter()) for t in corpus] == expected
    one = Scrubber(cache_dir=tmp_path, processes=1)
    assert [one.scrub(t, Counter()) for t in corpus] == expected
    # batches in flight two at a time: the second borrows the first's new texts, the third is new
    n = 150
    piped = Scrubber(cache_dir=tmp_path, processes=2)
    sizes, submit = [], piped._submit

    def spy(batch, earlier=None):
        p = submit(batch, earlier)
        sizes.append((len(p.todo), sum(map(len, p.borrowed.values()))))
        return p

    monkeypatch.setattr(piped, "_submit", spy)
    texts = corpus[:n] + corpus[:n][::-1] + corpus[n:]
    assert list(piped.scrub_many(texts, Counter(), batch_size=n)) == expected[:n] + expected[:n][::-1] + expected[n:]
    assert sizes[:2] == [(n, 0), (0, n)] and sizes[2][0] >= POOL_MIN  # analysed once; the pool again


def test_lemmas_are_made_only_where_context_words_are_read(tmp_path):
    from ftctl.lib import scrub

    s = Scrubber(cache_dir=tmp_path, processes=1)
    nlp = s._engine.nlp_engine.nlp["en"]
    arts = list(scrub._artifacts(s._engine.nlp_engine, ["Call Maria Gonzalez", "claims for members 88412345"]))
    assert [e.text for e in arts[0].entities] == ["Maria Gonzalez"]
    assert "lemmas" not in vars(arts[0])  # nothing asked for them
    full = nlp("claims for members 88412345")  # the whole pipeline, tagger and lemmatizer included
    assert arts[1].lemmas == [t.lemma_ for t in full] == ["claim", "for", "member", "88412345"]
    assert arts[1].keywords == ["claim", "member", "88412345"]


def test_the_model_multiplies_through_numpy_blas_on_one_thread(tmp_path):
    """thinc's bundled BLIS falls back to generic kernels on CPUs it does not know; the scrubber's
    model uses numpy's BLAS, on one thread while it runs (the workers are one per core already)."""
    import threadpoolctl

    from ftctl.lib import scrub

    s = Scrubber(cache_dir=tmp_path, processes=1)
    tok2vec = s._engine.nlp_engine.nlp["en"].get_pipe("ner").model.get_ref("tok2vec")
    assert not any(layer.ops.use_blis for layer in tok2vec.walk())
    with scrub._one_blas_thread():
        assert {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"} == {1}
