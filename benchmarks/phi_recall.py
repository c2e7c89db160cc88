"""Benchmark: PHI recall and precision of ftctl's scrubber, on labelled data nobody here wrote.

Data sets (each row: a text + the labelled spans of what it contains):

  fng       presidio-evaluator's PresidioSentenceFaker with its default records (Fake Name
            Generator identities from many countries: non-US addresses, phones and ZIPs)
  en_us     the same generator and templates, every value drawn from Faker's en_US providers
  house     tests/data/pii_labelled.jsonl: written here alongside the old recognizers (an upper
            bound, shown for comparison only)

For each labelled span: caught when every letter and digit of it is inside some scrubbed span
(of any type: what matters is that it does not leave). Per type: recall = caught / labelled;
precision = scrubbed spans overlapping a labelled PHI span / scrubbed spans of that type. A row
"leaves with PHI" when any of its PHI spans is not caught. Not PHI under Safe Harbor, so not
counted against recall: organisations, job titles, nationalities, a bare year, a weekday alone,
an age <= 89. The generator's templates write line breaks as a literal backslash-n; they are
restored (same length, so the labelled offsets hold) before scrubbing.
Place names (the generator's GPE: cities, states and countries alike) are shown apart: the
scrubber finds them only with `curate.scrub.types` including LOCATION (opt-in).

Speed: rows/s of the default scrubber (patterns + spaCy NER) against patterns only, same run.

    .venv/bin/python benchmarks/phi_recall.py [--rows 1000] [--seed 7] [--json]
    (needs the phi-bench extra: pip install -e '.[phi-bench]')
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRUCTURED = ("PHONE", "EMAIL", "SSN", "DATE", "URL", "ADDRESS", "ZIP", "CREDIT_CARD", "IBAN", "IP_ADDRESS",
              "DRIVER_LICENSE", "AGE_OVER_89", "MRN", "DOB", "URL_TOKEN")
GOLD = {"PERSON": "PERSON", "STREET_ADDRESS": "ADDRESS", "ZIP_CODE": "ZIP", "GPE": "PLACE",
        "PHONE_NUMBER": "PHONE", "EMAIL_ADDRESS": "EMAIL", "US_SSN": "SSN", "CREDIT_CARD": "CREDIT_CARD",
        "IBAN_CODE": "IBAN", "IP_ADDRESS": "IP_ADDRESS", "DOMAIN_NAME": "URL", "US_DRIVER_LICENSE": "DRIVER_LICENSE"}
NOT_PHI = {"ORGANIZATION", "TITLE", "NRP", "YEAR", "WEEKDAY", "AGE"}
_ALNUM = re.compile(r"[0-9A-Za-z]")


def gold_type(entity: str, value: str) -> str:
    if entity == "DATE_TIME":
        if re.fullmatch(r"\s*\d{4}\s*", value):
            return "YEAR"
        return "WEEKDAY" if re.fullmatch(r"\s*(?:mon|tues|wednes|thurs|fri|satur|sun)day\s*", value, re.I) else "DATE"
    if entity == "AGE":
        return "AGE_OVER_89" if value.strip().isdigit() and int(value) > 89 else "AGE"
    return GOLD.get(entity, entity)


def generated(rows: int, seed: int, us_only: bool) -> list[tuple[str, list[tuple[int, int, str]]]]:
    import pandas as pd
    from presidio_evaluator.data_generator import PresidioSentenceFaker

    random.seed(seed)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), contextlib.redirect_stderr(io.StringIO()):  # "can't download hospitals data": it uses its built-in list
        warnings.simplefilter("ignore")
        faker = PresidioSentenceFaker(locale="en_US", lower_case_ratio=0.05, random_seed=seed,
                                      base_records=pd.DataFrame({"_": [0]}) if us_only else None)
        samples = faker.generate_new_fake_sentences(rows)
    # the templates write line breaks as a literal backslash-n: restored, same length (offsets hold)
    return [(s.full_text.replace("\\n", "\n "), [(sp.start_position, sp.end_position, gold_type(sp.entity_type, sp.entity_value))
                           for sp in s.spans]) for s in samples]


def house() -> list[tuple[str, list[tuple[int, int, str]]]]:
    out = []
    for line in (ROOT / "tests" / "data" / "pii_labelled.jsonl").read_text().splitlines():
        r = json.loads(line)
        spans = []
        for p in r["pii"]:
            i = r["text"].find(p["value"])
            if i >= 0:
                spans.append((i, i + len(p["value"]), p["type"]))
        out.append((r["text"], spans))
    return out


def score(scrubber, data) -> dict:
    labelled, caught = Counter(), Counter()
    found, true = Counter(), Counter()
    leaked_rows = leaked_rows_no_place = 0
    t0 = time.perf_counter()
    for text, spans in data:
        got = scrubber.analyze(text)
        covered = set()
        for s in got:
            covered.update(range(s.start, s.end))
        leak = leak_no_place = False
        for a, b, t in spans:
            if t in NOT_PHI:
                continue
            labelled[t] += 1
            ok = all(i in covered for i in range(a, b) if _ALNUM.match(text[i]))
            caught[t] += ok
            if not ok:
                leak = True
                leak_no_place |= t != "PLACE"
        leaked_rows += leak
        leaked_rows_no_place += leak_no_place
        for s in got:
            found[s.type] += 1
            true[s.type] += any(a < s.end and s.start < b for a, b, t in spans if t not in NOT_PHI)
    seconds = time.perf_counter() - t0
    structured = [t for t in labelled if t in STRUCTURED]
    return {
        "rows": len(data), "rows_per_s": round(len(data) / seconds, 1),
        "recall": {t: {"caught": caught[t], "labelled": labelled[t], "recall": round(caught[t] / labelled[t], 3)}
                   for t in sorted(labelled)},
        "precision": {t: {"true": true[t], "found": found[t], "precision": round(true[t] / found[t], 3)}
                      for t in sorted(found)},
        "structured_recall": round(sum(caught[t] for t in structured) / max(1, sum(labelled[t] for t in structured)), 3),
        "rows_leaving_with_phi": round(leaked_rows / len(data), 3),
        "rows_leaving_with_phi_excluding_places": round(leaked_rows_no_place / len(data), 3),
    }


def table(results: dict) -> str:
    sets = list(results["sets"])
    types = sorted({t for s in sets for t in results["sets"][s]["recall"]},
                   key=lambda t: (t not in STRUCTURED, t == "PLACE", t))
    lines = ["| type | " + " | ".join(f"{s} recall (n)" for s in sets) + " | " +
             " | ".join(f"{s} precision" for s in sets) + " |",
             "|---|" + "---|" * (2 * len(sets))]
    for t in types:
        rec = [results["sets"][s]["recall"].get(t) for s in sets]
        pre = [results["sets"][s]["precision"].get({"PLACE": "LOCATION"}.get(t, t)) for s in sets]
        lines.append(f"| {t} | " + " | ".join(f"{r['recall']:.3f} ({r['labelled']})" if r else "—" for r in rec)
                     + " | " + " | ".join(f"{p['precision']:.3f}" if p else "—" for p in pre) + " |")
    for key, label in (("structured_recall", "structured types, pooled recall"),
                       ("rows_leaving_with_phi", "rows leaving with any PHI"),
                       ("rows_leaving_with_phi_excluding_places", "… not counting place names"),
                       ("rows_per_s", "rows/s, default scrubber")):
        lines.append(f"| **{label}** | " + " | ".join(str(results["sets"][s][key]) for s in sets)
                     + " |" + " |" * len(sets))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000, help="generated rows per synthetic set")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from ftctl.lib.scrub import Scrubber

    cache = ROOT / ".ftctl" / "cache"
    full = Scrubber(cache_dir=cache)
    patterns = Scrubber(cache_dir=cache, names=False)
    data = {"fng": generated(args.rows, args.seed, us_only=False), "en_us": generated(args.rows, args.seed, us_only=True),
            "house": house()}
    full.analyze("warm up"), patterns.analyze("warm up")
    results = {"scrubber": full.describe(), "sets": {k: score(full, v) for k, v in data.items()}}
    t0 = time.perf_counter()
    for text, _ in data["en_us"]:
        patterns.analyze(text)
    results["patterns_only_rows_per_s"] = round(len(data["en_us"]) / (time.perf_counter() - t0), 1)
    results["ner_cost"] = round(results["patterns_only_rows_per_s"] / results["sets"]["en_us"]["rows_per_s"], 2)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"scrubber: {results['scrubber']['engine']}, names: {results['scrubber']['names']}, "
          f"{len(results['scrubber']['types'])} types\n")
    print(table(results))
    print(f"\npatterns only (names off): {results['patterns_only_rows_per_s']} rows/s on en_us; "
          f"the NER model costs {results['ner_cost']}x")


if __name__ == "__main__":
    main()
