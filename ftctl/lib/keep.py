"""Keep domain content: the code shapes a PHI recognizer must not eat.

Healthcare and insurance answers are full of codes shaped like identifiers: Presidio's
driver-licence patterns match ICD-10 codes (``I70.302`` became ``<DRIVER_LICENSE>.302``), HCPCS
codes and vitamin names. ``keep.yaml`` beside this file lists those shapes, each with why; a team
adds its own (product codes, SKUs) with ``curate.scrub.keep: [regex, ...]``. A recognizer's span
that lies wholly inside a kept match is dropped, unless a context word supported it (then someone
labelled it as an identifier). Presidio's own ``allow_list`` drops a span only when the span
itself matches, which cannot see that ``I70`` is the start of ``I70.302``; hence this module.

Fail closed: a keep pattern that hits its time limit keeps nothing, so the text is scrubbed as if
the pattern did not exist.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
import importlib.util
from pathlib import Path

from ftctl.errors import ConfigError

KEEP_YAML = Path(__file__).parent / "keep.yaml"
TIMEOUT_S = 2  # per pattern per analysis window, as for the recognizers
CHECKS = ("icd10cm", "loinc")


@dataclass(frozen=True)
class Keep:
    name: str
    regex: object  # a compiled `regex` pattern (it supports a timeout; `re` does not)
    check: str | None = None
    why: str = ""


def compile_user(patterns: list[str], where: str = "curate.scrub.keep") -> list[Keep]:
    """A team's own keep patterns; a bad one is a config error naming its key."""
    import regex

    out = []
    for i, p in enumerate(patterns):
        key = f"{where}[{i}]"
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{key}: expected a non-empty regex", hint="e.g. 'SKU-[0-9]{6}'")
        try:
            compiled = regex.compile(p)
        except regex.error as e:
            raise ConfigError(f"{key}: {p!r} is not a valid regex ({e})",
                              hint="a Python regex, e.g. 'SKU-[0-9]{6}'") from None
        if compiled.search(""):
            raise ConfigError(f"{key}: {p!r} matches the empty string (it would keep nothing useful)",
                              hint="make it match at least one character")
        out.append(Keep(f"curate.scrub.keep[{i}]", compiled, None, "the team's own pattern"))
    return out


@functools.cache
def builtin() -> tuple[Keep, ...]:
    import regex
    from ruamel.yaml import YAML

    data = YAML(typ="safe", pure=True).load(KEEP_YAML.read_text(encoding="utf-8"))
    out = []
    for e in data["keep"]:
        if e.get("check") not in (None, *CHECKS):
            raise ValueError(f"keep.yaml: {e['name']}: unknown check {e['check']!r}")
        out.append(Keep(e["name"], regex.compile(e["regex"]), e.get("check"), e["why"]))
    return tuple(out)


def spans(text: str, patterns: tuple[Keep, ...] | list[Keep]) -> tuple[list[tuple[int, int]], list[str]]:
    """[start, end) of each kept match in ``text``, and the names of patterns that timed out
    (they keep nothing: fail closed)."""
    out, timed_out = [], []
    for k in patterns:
        found = []
        try:
            for m in k.regex.finditer(text, timeout=TIMEOUT_S):
                if m.end() > m.start() and (k.check is None or _valid(k.check, m.group())):
                    found.append((m.start(), m.end()))
        except TimeoutError:
            timed_out.append(k.name)  # what it found before the limit is dropped too
            continue
        out += found
    return out, timed_out


def inside(start: int, end: int, kept: list[tuple[int, int]]) -> bool:
    return any(a <= start and end <= b for a, b in kept)


def _valid(check: str, value: str) -> bool:
    if check == "icd10cm":
        return value.replace(".", "") in icd10cm_codes()
    if check == "loinc":
        number, digit = value.split("-")
        return luhn_digit(number) == int(digit)
    raise ValueError(check)


def luhn_digit(number: str) -> int:
    """LOINC's mod-10 check digit (the Luhn algorithm over the digits before the hyphen)."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it: importing simple_icd_10_cm
    parses a 10 MB XML, and drug_named_entity_recognition unpickles files (one from the home
    directory) with the plain unpickler."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the {name} package is not installed")
    return Path(list(spec.submodule_search_locations)[0])


@functools.cache
def icd10cm_codes() -> frozenset[str]:
    """Every ICD-10-CM code and category, without dots, from the CMS code list that the
    `simple-icd-10-cm` package ships (read as a file: importing the package parses its 10 MB XML)."""
    data = package_dir("simple_icd_10_cm") / "data"
    lists = sorted(p for p in data.iterdir() if p.name.startswith("code-list") and p.name.endswith(".txt"))
    if not lists:
        raise RuntimeError("simple-icd-10-cm ships no code list")
    return frozenset(line.strip() for line in lists[-1].read_text(encoding="utf-8").splitlines()
                     if line.strip() and "-" not in line)
