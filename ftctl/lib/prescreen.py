"""Which of Presidio's pattern recognizers cannot match a text, known before running them.

A phone, SSN, card or date regex cannot match a text with no digit, an email regex one with no
'@': most rows of a chat history have nothing for most of the ~40 patterns, which still cost a
regex scan each. Each pattern's needs are derived from its own parse tree (Python's regex parser,
not a hand list): "every match holds at least k characters of the set S", for sets of digits and
punctuation (letters and spaces are in every text: no use). A pattern whose needs a text does not
meet is not run for that text; a recognizer left with none is not run at all. Exact: what is
skipped would have found nothing. A regex the parser reads differently from the ``regex`` module
Presidio matches with, or cannot read, and a recognizer that is not plain patterns (NER, a custom
``analyze``) are always run. Presidio's phone recognizer (python-phonenumbers, leniency VALID or
stricter, US numbering) needs PHONE_DIGITS digits: the digits of what it finds are in the text
(the matcher's candidates are digits and punctuation), and no valid number has fewer. (A pattern
left out cannot time out either: a text it cannot match is no longer rejected because its regex
was slow to say so.)
"""

from __future__ import annotations

import copy
import string
import warnings
from collections.abc import Iterable
from operator import itemgetter

import cachetools

try:  # Python's own regex parser: private, so a Python without it screens nothing
    from re import _constants as C
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover
    sre_parse = None

_LETTERS = frozenset(string.ascii_letters)
_DIGITS = frozenset(string.digits)
_SPACES = frozenset(" \t\n\r\f\v")
_ASCII = frozenset(map(chr, range(128)))
# Presidio's flags (IGNORECASE, MULTILINE, DOTALL) and UNICODE and VERBOSE, whose values the `regex`
# module shares with `re`; any other flag (regex.V1, FULLCASE, ...) may change what a pattern means
_KNOWN_FLAGS = 2 | 8 | 16 | 32 | 64
_VERBOSE = 64
# The fewest digits a valid phone number found with US as the default region holds in the text: a
# national number of at least 4 digits after a country code of 2 (Austria, Germany, Iran), 10
# after North America's implicit +1. A constant, not read at run time (loading every region's
# metadata costs 0.26 s per process); tests/collect/test_prescreen.py derives it from the metadata.
PHONE_DIGITS, PHONE_REGIONS = 6, frozenset({"US"})


class _Unprovable(Exception):
    pass


def _chars(op, av) -> tuple[frozenset, bool] | None:
    """What one character-consuming node can match: (its ASCII characters, may it match a
    non-ASCII one too). None: perhaps a letter or a space (in every text: no use), or a non-ASCII
    character, which under IGNORECASE may stand for an ASCII letter (the Kelvin sign for k)."""
    if op is C.LITERAL:
        ch = chr(av)
        return None if av >= 128 or ch in _LETTERS or ch in _SPACES else (frozenset(ch), False)
    if op is not C.IN:
        return None  # ANY, NOT_LITERAL
    ascii_part, other = set(), False
    for iop, iav in av:
        if iop is C.LITERAL and iav < 128:
            ascii_part.add(chr(iav))
        elif iop is C.RANGE and iav[1] < 128:
            ascii_part.update(map(chr, range(iav[0], iav[1] + 1)))
        elif iop is C.CATEGORY and iav is C.CATEGORY_DIGIT:
            ascii_part.update(string.digits)  # and Unicode digits (the `regex` module's \d): no case
            other = True
        else:  # NEGATE, \w, \s, \W, \S, \D, non-ASCII characters
            return None
    if ascii_part & (_LETTERS | _SPACES):
        return None
    return frozenset(ascii_part), other


def _leaves(tree, out: set) -> None:
    for op, av in tree:
        if op in (C.LITERAL, C.IN):
            if op is C.LITERAL and av in (ord("{"), ord("[")) or op is C.IN and (C.LITERAL, ord("[")) in av:
                # `re` reads a `regex` fuzzy constraint ("{e<=1}") or a POSIX class ("[[:digit:]]")
                # as literal text; the `regex` module does not
                raise _Unprovable
            if (cs := _chars(op, av)) is not None:
                out.add(cs)
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            _leaves(av[2], out)
        elif op is C.SUBPATTERN:
            _leaves(av[3], out)
        elif op is C.ATOMIC_GROUP:
            _leaves(av, out)
        elif op is C.BRANCH:
            for alt in av[1]:
                _leaves(alt, out)
        elif op in (C.ASSERT, C.ASSERT_NOT):
            _leaves(av[1], out)
        elif op is C.GROUPREF_EXISTS:
            _leaves(av[1], out)
            if av[2] is not None:
                _leaves(av[2], out)
        elif op not in (C.AT, C.ANY, C.NOT_LITERAL, C.GROUPREF):
            raise _Unprovable(op)


def _least(tree, need: tuple[frozenset, bool]) -> tuple[int, int]:
    """The fewest characters of ``need`` that any match of ``tree`` consumes, and the fewest the
    text holds around it (what it consumes, or what a lookahead or lookbehind must see there)."""
    used = seen = 0
    for op, av in tree:
        n = m = 0
        if op in (C.LITERAL, C.IN):
            cs = _chars(op, av)
            n = m = int(cs is not None and cs[0] <= need[0] and (need[1] or not cs[1]))
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            if av[0]:
                n, m = _least(av[2], need)
                n *= av[0]
        elif op is C.SUBPATTERN:
            n, m = _least(av[3], need)
        elif op is C.ATOMIC_GROUP:
            n, m = _least(av, need)
        elif op is C.BRANCH:
            n, m = map(min, zip(*(_least(alt, need) for alt in av[1])))
        elif op is C.ASSERT:  # consumes nothing, but what it looks at is in the text
            m = _least(av[1], need)[1]
        # negative lookarounds, anchors, back references and conditionals: nothing
        used += n
        seen = max(seen, m)
    return used, max(used, seen)


def needs(regex: str, flags: int) -> dict[tuple[frozenset, bool], int] | None:
    """For each character set ``(ASCII characters, also non-ASCII ones)``, the fewest of its
    characters every match of ``regex`` holds (only sets with at least one); None: unprovable."""
    if sre_parse is None or not isinstance(flags, int) or flags & ~_KNOWN_FLAGS:
        return None
    try:
        with warnings.catch_warnings():  # "possible nested set": such a pattern is unprovable below
            warnings.simplefilter("ignore")
            tree = sre_parse.parse(regex, flags & _VERBOSE)
        found: set = set()
        _leaves(tree, found)
    except Exception:  # noqa: BLE001 (anything the parser rejects or reads its own way)
        return None
    return {s: n for s in found if (n := _least(tree, s)[1])}


class Screen:
    """The recognizers of one request, and per text the ones that may match it: a recognizer of
    plain patterns without those whose needs the text does not meet (a copy with the rest, or
    left out when none is left), every other recognizer as it is."""

    def __init__(self, recognizers: Iterable):
        from presidio_analyzer import EntityRecognizer, PatternRecognizer, predefined_recognizers

        self.recognizers = list(recognizers)
        # analyze methods that only run self.patterns with the recognizer's flags
        plain = {PatternRecognizer.analyze}
        if (iban := getattr(predefined_recognizers, "IbanRecognizer", None)) is not None:
            plain.add(iban.analyze)
        phone = getattr(predefined_recognizers, "PhoneRecognizer", None)
        self._plans: list[list | None] = []  # per recognizer: None (always run) or [(pattern, needs)]
        for r in self.recognizers:
            plan = None
            own_context = type(r).enhance_using_context is not EntityRecognizer.enhance_using_context
            if own_context:
                pass  # it may add results of its own: always run
            elif type(r).analyze in plain:
                plan = [(p, _useful(needs(p.regex, r.global_regex_flags))) for p in r.patterns or ()]
                if not any(n for _, n in plan):
                    plan = None
            elif (phone is not None and type(r).analyze is phone.analyze and (r.leniency or 0) >= 1
                  and set(r.supported_regions) <= PHONE_REGIONS):
                plan = [(None, {(_DIGITS, True): PHONE_DIGITS})]  # whole or nothing: no patterns to part
            self._plans.append(plan)
        needed = [n for plan in self._plans if plan for _, n in plan if n]
        self._sets = sorted({s for n in needed for s in n}, key=lambda s: (sorted(s[0]), s[1]))
        # counts above the most any pattern needs tell nothing more (and would only split the memo)
        self._caps = [max(n.get(s, 0) for n in needed) for s in self._sets]
        self._chars = sorted({c for s in self._sets for c in s[0]})
        self._sums = [(itemgetter(*(self._chars.index(c) for c in sorted(s[0]))), s[1]) for s in self._sets]
        self._memo = cachetools.LRUCache(4096)  # per capped counts: a few hundred in practice

    def key(self, text: str) -> tuple[int, ...]:
        """How many characters of each set ``text`` holds, capped."""
        counts = list(map(text.count, self._chars))
        other = 0 if text.isascii() else len(text) - len(text.encode("ascii", "ignore"))
        return tuple(min(_total(get(counts)) + other * unicode, cap) for (get, unicode), cap in zip(self._sums, self._caps))

    def select(self, text: str) -> list:
        """The recognizers that may match ``text``, in the request's order."""
        key = self.key(text)
        if (chosen := self._memo.get(key)) is None:
            have = dict(zip(self._sets, key))
            chosen = []
            for r, plan in zip(self.recognizers, self._plans):
                if plan is None:
                    chosen.append(r)
                    continue
                keep = [p for p, n in plan if not n or all(have[s] >= k for s, k in n.items())]
                if len(keep) == len(plan):
                    chosen.append(r)
                elif keep:  # the same recognizer (its id too: results and context words refer to it)
                    part = copy.copy(r)
                    part.patterns = keep
                    chosen.append(part)
            self._memo[key] = chosen
        return list(chosen)


def _total(got) -> int:
    return got if isinstance(got, int) else sum(got)


def _useful(found: dict | None) -> dict | None:
    """``found`` with a need on part of the digits ('0-5', '1-9', [13]) read as the same need on
    all of them: weaker, but one count per text serves every pattern."""
    if not found:
        return found
    out: dict = {}
    for s, n in found.items():
        if s[0] < _DIGITS:
            s = (_DIGITS, False)
        out[s] = max(n, out.get(s, 0))
    return out
