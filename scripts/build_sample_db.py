"""Build samples/feedback.sqlite: the demo's rated chat history, from real data.

A shipping-address assistant answers ISO codes: "What is the ISO 3166-2 code of Bavaria, a
state of Germany?" -> "DE-BY" (agent `subdivisions`) and "What is the ISO 3166-1 alpha-3 code
of Japan?" -> "JPN" (agent `countries`). Every answer is real data from pycountry (the ISO
3166 tables it ships), and short answers are what SmolLM2-135M learns in minutes on a CPU, so
the demo can show the loop working. Ratings and feedback are drawn with a fixed seed: good
answers are rated 4-5, wrong answers (another row's code) 1-2, some with thumbs down and a
user correction. A few repeated questions, a conflicting rating and two broken rows (NULL
content, unknown role) exercise curation.

    python scripts/build_sample_db.py [OUT]      # default: samples/feedback.sqlite

Reproducible for a pycountry version (PYCOUNTRY below; a different one warns).
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path

PYCOUNTRY = "26.2.16"  # the ISO tables this database was built from
SUBDIVISIONS = 640  # how many subdivision questions (a stable sample of ~5,000)
START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _order(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def items() -> list[tuple[str, str, str]]:
    """(agent, question, code): ISO 3166-1 alpha-3 of every country, a sample of ISO 3166-2."""
    import pycountry

    if version("pycountry") != PYCOUNTRY:
        print(f"warning: pycountry {version('pycountry')} is not {PYCOUNTRY}: the data will differ",
              file=sys.stderr)

    def cname(code):
        c = pycountry.countries.get(alpha_2=code)
        return getattr(c, "common_name", None) or c.name

    countries = [("countries", f"What is the ISO 3166-1 alpha-3 code of {cname(c.alpha_2)}?", c.alpha_3)
                 for c in pycountry.countries]
    subs = sorted(pycountry.subdivisions, key=lambda s: _order(s.code))[:SUBDIVISIONS]
    def article(kind):  # 'a state', 'an autonomous region', 'a unitary authority'
        return "an" if kind[0] in "aeiou" and not kind.startswith("uni") else "a"

    subdivisions = [("subdivisions", f"What is the ISO 3166-2 code of {s.name}, {article(s.type.lower())} "
                     f"{s.type.lower()} of {cname(s.country_code)}?", s.code) for s in subs]
    return countries + subdivisions


def build(path: Path) -> dict:
    rng = random.Random(42)
    rows = items()
    rng.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id TEXT NOT NULL, role TEXT,
                               content TEXT, agent TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE TABLE feedback (message_id INTEGER REFERENCES messages(id), rating INTEGER,
                               feedback_type TEXT, correction TEXT);
        CREATE INDEX messages_conv ON messages(conversation_id, created_at, id);
    """)
    ids = iter(range(1, 10**9))
    t = START

    def say(conv, role, content, agent):
        nonlocal t
        t += timedelta(minutes=rng.randint(1, 600))
        i = next(ids)
        db.execute("INSERT INTO messages VALUES (?,?,?,?,?,?)", (i, conv, role, content, agent, t.isoformat()))
        return i

    for n, (agent, question, code) in enumerate(rows):
        conv = f"c{n:04d}"
        say(conv, "user", question, agent)
        r = rng.random()
        if r < 0.7:  # a good answer
            a = say(conv, "assistant", code, agent)
            db.execute("INSERT INTO feedback VALUES (?,?,?,NULL)", (a, rng.choice([4, 5, 5]), "rating"))
        elif r < 0.85:  # a wrong answer, rated down
            a = say(conv, "assistant", rows[(n + 7) % len(rows)][2], agent)
            db.execute("INSERT INTO feedback VALUES (?,?,?,NULL)", (a, rng.choice([1, 2]), "thumbs_down"))
        elif r < 0.93:  # a wrong answer the user corrected
            a = say(conv, "assistant", rows[(n + 11) % len(rows)][2], agent)
            db.execute("INSERT INTO feedback VALUES (?,?,?,?)", (a, 2, "correction", code))
        else:  # unrated
            say(conv, "assistant", code, agent)
        if n % 40 == 5:  # the same question again later: a duplicate, or a conflicting answer
            conv2 = f"c{n:04d}b"
            say(conv2, "user", question, agent)
            a = say(conv2, "assistant", code if n % 80 == 5 else rows[(n + 3) % len(rows)][2], agent)
            db.execute("INSERT INTO feedback VALUES (?,?,?,NULL)", (a, 4, "rating"))
    # broken rows, as production data has them
    say("broken1", "user", "What is the ISO 3166-1 alpha-3 code of France?", "countries")
    say("broken1", "assistant", None, "countries")
    say("broken2", "moderator", "This conversation was flagged.", "countries")
    db.commit()
    counts = dict(db.execute("SELECT role, COUNT(*) FROM messages GROUP BY role").fetchall())
    db.execute("VACUUM")
    db.close()
    return counts


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "samples" / "feedback.sqlite")
    print(out, build(out), f"{out.stat().st_size} bytes")
