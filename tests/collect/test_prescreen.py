"""The pre-check that leaves out pattern recognizers a text cannot match (ftctl/lib/prescreen.py).

Exact by construction: a pattern is left out only when the text holds fewer characters of a set
than every match of it needs. That the scrubbed output is byte-identical with and without it is
tests/collect/test_scrub_fast.py (the slow path runs every recognizer).
"""

from __future__ import annotations

import string
import threading
from collections import Counter

import pytest

from ftctl.lib import prescreen
from ftctl.lib.scrub import Scrubber

DIGITS = (frozenset(string.digits), True)  # \d: ASCII digits and Unicode ones
FLAGS = 26  # Presidio's IGNORECASE | MULTILINE | DOTALL


@pytest.mark.parametrize(("regex", "expected"), [
    (r"\b\d{3}-\d{2}-\d{4}\b", {DIGITS: 9, (frozenset("-"), False): 2}),
    (r"[\w.+-]+@[\w-]+\.\w+", {(frozenset("@"), False): 1, (frozenset("."), False): 1}),
    (r"(?:ab|\d\d)\d", {DIGITS: 1}),  # an alternative without digits: one, not three
    (r"member\s*(?=[A-Z-]*\d)[A-Z0-9]{4,}", {DIGITS: 1}),  # what a lookahead must see is in the text
    (r"[0-9]{2}", {(frozenset(string.digits), False): 2}),  # ASCII digits only
])
def test_needs_are_read_from_the_parse_tree(regex, expected):
    assert prescreen.needs(regex, FLAGS) == expected


@pytest.mark.parametrize("regex", [
    r"\p{Lu}{3}\d",  # the `regex` module's syntax: `re` cannot read it
    r"(?:\d{6}){e<=2}",  # a fuzzy match reads as literal text to `re`: it may match with no digit at all
    r"[[:digit:]]{4}",  # a POSIX class reads as a set of '[', ':', 'd', ... to `re`
])
def test_what_re_reads_differently_is_unprovable(regex):
    assert prescreen.needs(regex, FLAGS) is None


def test_letters_and_non_ascii_characters_are_no_need():
    # letters and spaces are in every text; under IGNORECASE the Kelvin sign also matches "k"
    assert prescreen.needs(r"(?i)abc\s+\u212a", FLAGS) == {}
    assert prescreen.needs(r"(?i)\u212a\d", FLAGS) == {DIGITS: 1}
    assert prescreen.needs(r"\d+", FLAGS | 0x100) is None  # regex.V1: another syntax
    assert prescreen.needs(r"\d+", None) is None  # flags it cannot read


def test_a_proven_recognizer_is_skipped_exactly_when_the_text_lacks_what_it_needs():
    from presidio_analyzer import Pattern, PatternRecognizer

    phone = PatternRecognizer(supported_entity="PHONE_SHAPE", name="phone",
                              patterns=[Pattern("nanp", r"\b\d{3}-\d{4}\b", 0.5)])
    email = PatternRecognizer(supported_entity="EMAIL", name="email",
                              patterns=[Pattern("at", r"\b\w+@\w+\.\w+\b", 0.5)])
    # a user's own recognizer: one pattern unprovable, one needing a digit
    custom = PatternRecognizer(supported_entity="SITE_CODE", name="site",
                               patterns=[Pattern("word", r"\p{Lu}{2}-CODE", 0.5), Pattern("num", r"PRD-\d{6}", 0.5)])
    letters = PatternRecognizer(supported_entity="WORDY", name="wordy", patterns=[Pattern("w", r"\bsecret\b", 0.5)])
    screen = prescreen.Screen([phone, email, custom, letters])

    def names(text):
        return {r.name: [p.name for p in r.patterns] for r in screen.select(text)}

    assert names("no digits, no at sign") == {"site": ["word"], "wordy": ["w"]}
    assert names("call 555-1234") == {"phone": ["nanp"], "site": ["word", "num"], "wordy": ["w"]}
    assert names("555 1234") == {"site": ["word"], "wordy": ["w"]}  # 7 digits but no '-'
    # counts, not places: enough digits and a '-' anywhere, and the patterns run (to find nothing)
    assert names("PRD 555 1234 - 5") == {"phone": ["nanp"], "site": ["word", "num"], "wordy": ["w"]}
    assert names("12-34") == {"site": ["word"], "wordy": ["w"]}  # a '-', but 4 digits of the 7 (and 6)
    assert names("me@x.org") == {"email": ["at"], "site": ["word"], "wordy": ["w"]}
    assert names("\u0663\u0664\u0665-\u0661\u0662\u0663\u0664")["phone"] == ["nanp"]  # Arabic-Indic digits: \d
    part = next(r for r in screen.select("no digits") if r.name == "site")
    assert part is not custom and part.id == custom.id  # a copy with fewer patterns, the same id
    assert [p.name for p in custom.patterns] == ["word", "num"]  # the recognizer itself untouched
    assert next(r for r in screen.select("PRD-123456") if r.name == "site") is custom


def test_recognizers_that_are_not_plain_patterns_always_run():
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class Own(PatternRecognizer):  # its own analyze: what it does is not its patterns alone
        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
            return super().analyze(text, entities, nlp_artifacts, regex_flags)

    own = Own(supported_entity="OWN", name="own", patterns=[Pattern("d", r"\d{5}", 0.5)])
    lenient = PhoneRecognizer(supported_regions=("US",), leniency=0)  # possible numbers: no bound proven
    guernsey = PhoneRecognizer(supported_regions=("GG",))  # its local numbers gain 4 digits in parsing
    assert prescreen.Screen([own, lenient, guernsey]).select("nothing here") == [own, lenient, guernsey]


def test_the_phone_recognizer_runs_only_on_texts_with_enough_digits():
    import phonenumbers
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    phone = PhoneRecognizer(supported_regions=("US",))
    screen = prescreen.Screen([phone])
    # the shortest valid numbers there are: a 4-digit national number after a 2-digit country code
    for number in ("+43 1112", "+49 1644", "+\u0664\u0669 \u0661\u0666\u0664\u0664", "(202) 555-0143"):
        assert phonenumbers.is_valid_number(phonenumbers.parse(number, "US")), number
        text = f"call {number} today"
        assert phone.analyze(text, ["PHONE_NUMBER"]), number  # found (Arabic-Indic digits too) ...
        assert screen.select(text) == [phone], number  # ... and run
    assert screen.select("Question 1234: what is 5 squared?") == []  # five digits: no phone number


def test_phone_digits_is_the_fewest_a_valid_number_holds():
    """PHONE_DIGITS from the metadata itself: the digits a valid number holds in the text are its
    country code's when it is written (the main region's, whose rules parse it), plus its national
    number's, less those a national-prefix transform adds (counted generously: every digit of the
    rule); with US as the default region, a number without a country code is North American."""
    import re

    from phonenumbers import PhoneMetadata
    from phonenumbers import phonenumberutil as u

    def fewest(md, written_code: bool) -> int:
        lengths = [n for name in ("general_desc", "fixed_line", "mobile", "toll_free", "premium_rate", "shared_cost",
                                  "personal_number", "voip", "pager", "uan", "voicemail", "no_international_dialling")
                   if (desc := getattr(md, name, None)) is not None for n in desc.possible_length or () if n > 0]
        added = len(re.findall(r"\d", re.sub(r"[$\\]\d", "", md.national_prefix_transform_rule or "")))
        return written_code * len(str(md.country_code)) + min(lengths) - added

    codes = [(code, PhoneMetadata.metadata_for_region_or_calling_code(code, u.region_code_for_country_code(code)))
             for code in u.COUNTRY_CODE_TO_REGION_CODE]
    written = min(fewest(md, True) for code, md in codes if md is not None)
    implicit = min(fewest(PhoneMetadata.metadata_for_region(r), False) for r in prescreen.PHONE_REGIONS)
    assert prescreen.PHONE_DIGITS <= min(written, implicit)
    assert prescreen.PHONE_DIGITS == min(written, implicit)  # and it is not weaker than it need be


def test_the_scrubber_still_finds_a_custom_unprovable_pattern_and_skips_by_text(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("""recognizers:
  - name: project codes
    supported_language: en
    supported_entity: PROJECT_CODE
    patterns:
      - name: unicode letters
        regex: '\\b\\p{Lu}{2}-CODE\\b'
        score: 0.6
      - name: numbered
        regex: '\\bPRJ-\\d{5}\\b'
        score: 0.6
""")
    s = Scrubber(cache_dir=tmp_path, recognizers=site, names=False, processes=1)
    counts = Counter()
    assert s.scrub("see XY-CODE for the plan", counts) == "see <PROJECT_CODE> for the plan"
    assert s.scrub("and PRJ-12345 too", counts) == "and <PROJECT_CODE> too"
    assert counts == Counter(PROJECT_CODE=2)
    # while a text is screened, the registry gives the recognizers that may match it
    lookup = s._engine.registry.get_recognizers
    with lookup.screening("see XY-CODE"):
        seen = {r.name: [p.name for p in getattr(r, "patterns", ())] for r in lookup("en", s.entities)}
        elsewhere = []  # another thread, same analyzer: not screened by this thread's text
        worker = threading.Thread(target=lambda: elsewhere.extend(lookup("en", s.entities)))
        worker.start()
        worker.join()
    assert seen["project codes"] == ["unicode letters"]  # unprovable: run; numbered: needs digits
    assert "UsSsnRecognizer" not in seen and "PhoneRecognizer" not in seen  # both need digits
    everything = lookup("en", s.entities)  # outside the block: every recognizer
    assert len(everything) > len(seen) and [r.name for r in elsewhere] == [r.name for r in everything]
