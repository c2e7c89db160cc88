"""Build samples/feedback.sqlite: the demo's rated chat history, from real text.

Every answer is a real docstring from Python's standard library (the text ships with Python
itself); questions ask what a function does. Ratings and feedback are drawn with a fixed seed:
good answers (the function's own docstring) are rated 4-5, wrong answers (another function's
docstring) 1-2, some with thumbs down and a user correction. A few repeated questions, a
conflicting rating and two broken rows (NULL content, unknown role) exercise curation.

    python scripts/build_sample_db.py [OUT]      # default: samples/feedback.sqlite
"""

from __future__ import annotations

import importlib
import inspect
import random
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

MODULES = ["json", "os.path", "shutil", "textwrap", "string", "itertools", "functools", "pathlib",
           "statistics", "random", "base64", "hashlib", "heapq", "bisect", "difflib", "fnmatch",
           "glob", "csv", "datetime", "calendar", "collections", "urllib.parse", "html", "math"]
AGENTS = {"math": "numeric", "statistics": "numeric", "random": "numeric", "heapq": "numeric",
          "bisect": "numeric", "calendar": "numeric", "datetime": "numeric"}
START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def docs() -> list[tuple[str, str]]:
    """(qualified name, first paragraph of its docstring), for public functions with docs."""
    out, seen = [], set()
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not callable(obj):
                continue
            doc = inspect.getdoc(obj)
            if not doc or doc in seen:  # re-exported names share a docstring
                continue
            seen.add(doc)
            para = doc.split("\n\n")[0].strip()
            if 40 <= len(para) <= 600:
                out.append((f"{mod_name}.{name}", para))
    return out


def build(path: Path) -> dict:
    rng = random.Random(42)
    items = docs()
    rng.shuffle(items)
    items = items[:320]
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

    for n, (name, para) in enumerate(items):
        conv = f"c{n:04d}"
        agent = AGENTS.get(name.split(".")[0], "pydocs")
        say(conv, "system", "You answer questions about the Python standard library.", agent)
        say(conv, "user", f"What does {name} do?", agent)
        r = rng.random()
        if r < 0.7:  # a good answer
            a = say(conv, "assistant", para, agent)
            db.execute("INSERT INTO feedback VALUES (?,?,?,NULL)", (a, rng.choice([4, 5, 5]), "rating"))
        elif r < 0.85:  # a wrong answer, rated down
            wrong = items[(n + 7) % len(items)][1]
            a = say(conv, "assistant", wrong, agent)
            db.execute("INSERT INTO feedback VALUES (?,?,?,NULL)", (a, rng.choice([1, 2]), "thumbs_down"))
        elif r < 0.93:  # a wrong answer the user corrected
            wrong = items[(n + 11) % len(items)][1]
            a = say(conv, "assistant", wrong, agent)
            db.execute("INSERT INTO feedback VALUES (?,?,?,?)", (a, 2, "correction", para))
        else:  # unrated
            say(conv, "assistant", para, agent)
        if n % 40 == 5:  # the same question again later: a duplicate, or a conflicting answer
            conv2 = f"c{n:04d}b"
            say(conv2, "user", f"What does {name} do?", agent)
            a = say(conv2, "assistant", para if n % 80 == 5 else items[(n + 3) % len(items)][1], agent)
            db.execute("INSERT INTO feedback VALUES (?,?,?,NULL)", (a, 4, "rating"))
    # broken rows, as production data has them
    say("broken1", "user", "What does json.dumps do?", "pydocs")
    say("broken1", "assistant", None, "pydocs")
    say("broken2", "moderator", "This conversation was flagged.", "pydocs")
    db.commit()
    counts = dict(db.execute("SELECT role, COUNT(*) FROM messages GROUP BY role").fetchall())
    db.execute("VACUUM")
    db.close()
    return counts


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "samples" / "feedback.sqlite")
    print(out, build(out), f"{out.stat().st_size} bytes")
