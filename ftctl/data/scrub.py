"""PII/PHI scrubbing with Microsoft Presidio's pattern recognizers, fully offline.

Presidio needs an NLP engine; no trained spaCy model can be downloaded here, so we give it a
blank English pipeline (a tokenizer only). Every pattern recognizer works with it (emails,
phones, SSNs, credit cards, IPs, IBANs) and we add three pattern recognizers of our own for
what Presidio has no recognizer for (medical record numbers, dates of birth, URLs carrying
tokens). Person names need a statistical NER model: when none is installed, ``names`` reports
"unavailable" in the data card instead of pretending. Measured recall: docs/data-card.md.

Found spans become typed placeholders (``<EMAIL>``, ``<PHONE>``, ...), counted per type.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections import Counter
from pathlib import Path

# Presidio entity -> our placeholder type
TYPES = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "US_SSN": "SSN",
    "MRN": "MRN",
    "DOB": "DOB",
    "URL_TOKEN": "URL_TOKEN",
    "CREDIT_CARD": "CREDIT_CARD",
    "IP_ADDRESS": "IP_ADDRESS",
    "IBAN_CODE": "IBAN",
    "PERSON": "PERSON",
}
THRESHOLD = 0.3  # phone numbers score 0.4 without context; bare 9-digit runs score lower

# Our own pattern recognizers (Presidio has none for these). Each regex matches the value and
# the label that makes it identifying (``MRN: 1234567``): the whole span is replaced.
_PATTERNS = {
    "MRN": r"(?i)\b(?:MRN|medical record(?: number| no\.?| #)?|patient id)\s*[:#]?\s*[A-Z]{0,3}\d{5,10}\b",
    "DOB": (r"(?i)\b(?:DOB|D\.O\.B\.|date of birth|birth ?date|born(?: on)?)\s*[:\-]?\s*"
            r"(?:\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}|\d{4}-\d{2}-\d{2}|"
            r"(?:\d{1,2} )?[A-Z][a-z]{2,8}\.? \d{1,2}(?:st|nd|rd|th)?,? \d{4}|\d{1,2} [A-Z][a-z]{2,8} \d{4})"),
    "URL_TOKEN": (r"(?i)\bhttps?://[^\s\"'<>]*[?&#;](?:[a-z_]*token|key|api[_-]?key|sig|signature|auth|"
                  r"code|session|sid|password|pwd|secret|jwt)=[^\s\"'<>&]+[^\s\"'<>]*"),
    # SSN in its canonical form; Presidio's recognizer scores these low without NLP context
    "US_SSN": r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b",
}
_PRESIDIO = ("EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE")


class Scrubber:
    def __init__(self, types: list[str] | None = None, names: bool = True, cache_dir: Path | None = None):
        unknown = sorted(set(types or ()) - set(TYPES.values()))
        if unknown:
            from ftctl.errors import ConfigError

            raise ConfigError(f"curate.scrub.types: unknown PII type(s) {', '.join(unknown)}",
                              hint=f"known: {', '.join(sorted(set(TYPES.values())))}")
        wanted = set(types or TYPES.values())
        self.entities = [e for e, t in TYPES.items() if t in wanted and (e != "PERSON" or names)]
        self.cache_dir = cache_dir
        self.names = "unavailable"  # set by the engine: whether a NER model found names

    @functools.cached_property
    def _engine(self):
        engine, has_ner = _analyzer(str(self.cache_dir or Path.home() / ".cache" / "ftctl"))
        self.names = "spacy-ner" if has_ner else "unavailable"
        if not has_ner and "PERSON" in self.entities:
            self.entities.remove("PERSON")
        return engine

    def scrub(self, text: str, counts: Counter) -> str:
        """``text`` with PII replaced by ``<TYPE>``; adds what it found to ``counts``."""
        if not text:
            return text
        analyzer, anonymizer = self._engine
        from presidio_anonymizer.entities import OperatorConfig
        found = analyzer.analyze(text, language="en", entities=self.entities, score_threshold=THRESHOLD)
        if not found:
            return text
        ops = {e: OperatorConfig("replace", {"new_value": f"<{TYPES[e]}>"}) for e in TYPES}
        result = anonymizer.anonymize(text=text, analyzer_results=found, operators=ops)
        for item in result.items:
            counts[TYPES[item.entity_type]] += 1
        return result.text

    def scrub_messages(self, messages: list[dict[str, str]], counts: Counter) -> list[dict[str, str]]:
        return [{**m, "content": self.scrub(m.get("content") or "", counts)} for m in messages]


@functools.cache
def _analyzer(cache_dir: str):
    """Build Presidio once per process (importing spaCy takes seconds)."""
    import tldextract
    import tldextract.tldextract as tldx

    # Presidio's email check calls tldextract, which would fetch the public suffix list from the
    # internet; use the snapshot that ships inside tldextract instead (offline by design).
    tldx.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    # pattern recognizers run on the CPU: no need to probe torch for a GPU
    os.environ.setdefault("PRESIDIO_DEVICE", "cpu")
    with _without("torch", "transformers"):
        return _build(cache_dir)


def _build(cache_dir: str):
    import spacy
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_anonymizer import AnonymizerEngine

    model, has_ner = _spacy_model(Path(cache_dir), spacy)
    nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
    nlp.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
    for r in list(registry.recognizers):
        if r.supported_entities[0] not in (*_PRESIDIO, *(["PERSON"] if has_ner else [])):
            registry.remove_recognizer(r.name)
    for entity, regex in _PATTERNS.items():
        registry.add_recognizer(PatternRecognizer(
            supported_entity=entity, name=f"ftctl_{entity.lower()}", supported_language="en",
            patterns=[Pattern(entity.lower(), regex, 0.6)]))
    analyzer = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])
    return (analyzer, AnonymizerEngine()), has_ner


@contextlib.contextmanager
def _without(*modules: str):
    """Presidio (for its optional transformers NER) and thinc probe for torch at import time;
    pattern recognizers need neither, and collecting must not pay seconds of torch import.
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


def _spacy_model(cache_dir: Path, spacy) -> tuple[str, bool]:
    """An installed English NER model if there is one, else a blank pipeline saved once."""
    for name in ("en_core_web_lg", "en_core_web_md", "en_core_web_sm"):
        if spacy.util.is_package(name):
            return name, True
    path = cache_dir / "spacy-blank-en"
    if not (path / "config.cfg").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spacy.blank("en").to_disk(path)
    return str(path), False
