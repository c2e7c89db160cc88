"""Curation: pure functions over Examples, plus the on-disk spill that keeps dedup constant-memory.

Order of a row's life (ftctl/data/collect.py drives it):
  correction applied -> row filters (window, agent, feedback, tokens, golden) -> scrubbed ->
  spilled -> dedup -> conflicts -> limit -> split (stable hash) -> written.

Rules, stated once:
- A correction replaces the assistant answer; the original becomes the rejected side of a
  preference pair. Corrected answers skip the rating/reward filters (the rating judged the
  original).
- Negative feedback (thumbs down, rating or reward below the threshold) is never trained on as
  a target; it is counted under the filter that caught it and kept aside (``keep_negative``):
  paired with a kept answer to the same prompt (preference pairs), and every one of them, paired
  or not, as an unpaired disliked answer (KTO's data). Rows
  with no rating and no reward pass the rating filters (nothing says they were bad).
- Dedup (``exact`` or ``normalized``: case and whitespace folded) keeps the first occurrence.
- A conflict is one prompt (the whole conversation before the answer) with different answers:
  ``best_rating`` keeps the best rated (ties: the newest), ``latest`` the newest, ``drop`` none.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ftctl.config import CurateConfig
from ftctl.errors import ConfigError
from ftctl.records import Example

TOKEN_BINS = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)


# --- small pure functions ------------------------------------------------------------------


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def digest(text: str) -> int:
    """A 63-bit stable hash (fits SQLite's INTEGER)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def split_of(key: str, salt: str, val: float, test: float) -> str:
    """train/val/test from a stable hash of the conversation: never moves between snapshots."""
    u = int.from_bytes(hashlib.sha256(f"{salt}\x00{key}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


def prompt_messages(ex: Example) -> list[dict[str, str]]:
    """The conversation before the final answer."""
    msgs = ex.messages
    return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else list(msgs)


def _joined(messages: list[dict[str, str]]) -> str:
    # NUL/SOH separators: not in chat text and not whitespace (so normalize keeps them); cheaper than JSON
    return "\x00".join(f"{m['role']}\x01{m['content']}" for m in messages)


def prompt_key(ex: Example) -> str:
    return normalize(_joined(prompt_messages(ex)))


def dedup_key(ex: Example, mode: str) -> str:
    text = _joined(ex.messages)
    return normalize(text) if mode == "normalized" else text


def apply_correction(ex: Example) -> tuple[Example, str | None]:
    """The user's corrected answer becomes the target; returns (example, original answer)."""
    if not ex.correction:
        return ex, None
    original = ex.response if ex.messages[-1]["role"] == "assistant" else None
    msgs = [*prompt_messages(ex), {"role": "assistant", "content": ex.correction}]
    meta = {**ex.meta, "corrected": True}
    out = Example(**{**ex.__dict__, "messages": msgs, "meta": meta, "feedback_type": "correction"})
    return out, original


def scrub_row(ex: Example, original: str | None, scrub: Callable[[str], str]) -> tuple[Example, str | None]:
    """Every text of a row that a snapshot keeps, through ``scrub``: the turns (tool-call arguments too), the correction,
    the corrected original and each string in ``meta`` (keys and values, nested). A number in
    ``meta`` is checked as its text (a member number stored as an int) and becomes the
    placeholder when anything is found in it."""
    ex.messages = [{**m, "content": scrub(m.get("content") or "")} for m in ex.messages]
    for m in ex.messages:  # a call's arguments carry what users typed (an e-mail to look up)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _scrub_value(
                c["function"].get("arguments") or {}, scrub)}} for c in m["tool_calls"]]
    if ex.correction:  # applied already: it is the last turn, scrubbed above
        last = ex.messages[-1]
        ex.correction = last["content"] if last["role"] == "assistant" else scrub(ex.correction)
    if ex.meta:
        ex.meta = _scrub_value(ex.meta, scrub)
    return ex, (scrub(original) if original else original)


def _scrub_value(value, scrub: Callable[[str], str]):
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(str(k)): _scrub_value(v, scrub) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_value(v, scrub) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
        out = scrub(text)
        return value if out == text else out
    return value


def negative_reason(ex: Example, cfg: CurateConfig) -> str | None:
    """Why this answer must not be trained on (it may still serve as a rejected answer)."""
    if ex.meta.get("corrected"):
        return None
    if ex.feedback_type == "thumbs_down":
        return "negative_feedback"
    if ex.rating is not None and cfg.min_rating is not None and ex.rating < cfg.min_rating:
        return "min_rating"
    if ex.reward is not None and cfg.min_reward is not None and ex.reward < cfg.min_reward:
        return "min_reward"
    return None


def token_counter(tokenizer_json: Path | None) -> tuple[Callable[[str], int], str]:
    """Count with the base model's tokenizer.json (the light ``tokenizers`` package) when there
    is one; otherwise approximate: about 4 tokens per 3 whitespace-separated words, the usual
    ratio of English text under a BPE vocabulary. Returns (count, what was used)."""
    if tokenizer_json and Path(tokenizer_json).is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_json))
        return (lambda text: len(tok.encode(text, add_special_tokens=False).ids)), f"tokenizer:{tokenizer_json}"
    return (lambda text: math.ceil(len(text.split()) * 4 / 3)), "whitespace*4/3"


def example_text(ex: Example) -> str:
    return "\n".join(m["content"] for m in ex.messages)


def window(cfg: CurateConfig, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The time window from days_back or window_start/window_end (UTC)."""
    def parse(value: str, key: str) -> datetime:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"curate.{key}: {value!r} is not an ISO date/time",
                              hint="e.g. 2024-05-01 or 2024-05-01T12:00:00Z") from None
        return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)

    start = parse(cfg.window_start, "window_start") if cfg.window_start else None
    end = parse(cfg.window_end, "window_end") if cfg.window_end else None
    if cfg.days_back:
        back = now - timedelta(days=cfg.days_back)
        start = max(start, back) if start else back
    return start, end


class Filters:
    """The row filters: ``reason(ex)`` names the first filter that drops ``ex``, or None."""

    def __init__(self, cfg: CurateConfig, count_tokens: Callable[[str], int], now: datetime,
                 golden: set[str] = frozenset()):
        self.cfg, self.count, self.golden = cfg, count_tokens, golden
        self.start, self.end = window(cfg, now)
        self.agents = set(cfg.agent_types) if cfg.agent_types else None

    def reason(self, ex: Example) -> tuple[str | None, int]:
        """(filter name or None, token count); negatives are recognised by :func:`negative_reason`."""
        if self.start or self.end:
            t = ex.created_at
            if t is None or (self.start and t < self.start) or (self.end and t > self.end):
                return "window", 0
        if self.agents is not None and ex.agent not in self.agents:
            return "agent_type", 0
        if self.golden and (ex.key in self.golden or prompt_key(ex) in self.golden):
            return "golden", 0
        neg = negative_reason(ex, self.cfg)
        if neg:
            return neg, 0
        n = self.count(example_text(ex))
        if self.cfg.min_tokens is not None and n < self.cfg.min_tokens:
            return "min_tokens", n
        if self.cfg.max_tokens is not None and n > self.cfg.max_tokens:
            return "max_tokens", n
        return None, n


def golden_keys(path: Path) -> tuple[set[str], int]:
    """Conversation ids and normalised prompts of the pinned golden set (small by nature)."""
    if not path.is_file():
        raise ConfigError(f"curate.golden: {path} does not exist", hint="a JSONL file of examples, relative to the workspace")
    keys: set[str] = set()
    n = 0
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                ex = Example.from_dict(d) if "messages" in d else Example(
                    messages=[{"role": "user", "content": d["prompt"]}], conversation_id=d.get("conversation_id"))
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"curate.golden: {path.name}:{lineno} is not an example ({e})",
                                  hint="one JSON object per line with `messages` or `prompt`") from None
            if ex.conversation_id:
                keys.add(ex.conversation_id)
            keys.add(prompt_key(ex))
            n += 1
    return keys, n


def histogram(counts: list[int] | dict[int, int]) -> dict[str, int]:
    return {(f"{lo}-{hi - 1}" if hi else f"{lo}+"): n for lo, hi, n in _bins(counts)}


def _bins(counts):
    edges = list(TOKEN_BINS)
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        yield lo, hi, counts[i]


def bin_of(n: int) -> int:
    i = 0
    while i + 1 < len(TOKEN_BINS) and n >= TOKEN_BINS[i + 1]:
        i += 1
    return i


# --- the spill: dedup and conflicts over any number of rows in constant memory --------------


class Spill:
    """Candidates go to a JSONL file, their keys to a scratch SQLite table; SQL then decides
    duplicates and conflicts, and :meth:`results` replays the file with each row's status.

    SQLite does the grouping on disk, so a million rows cost a file, not a million dicts.
    """

    def __init__(self, directory: Path):
        self.path = directory / "candidates.jsonl"
        self.file = open(self.path, "wb")
        self.offset = 0
        self.db = sqlite3.connect(directory / "spill.sqlite")
        self.db.executescript("""
            PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
            CREATE TABLE c (line INTEGER PRIMARY KEY, offset INTEGER, dup INTEGER, prompt INTEGER,
                            resp INTEGER, rating REAL, ts TEXT, neg TEXT, tokens INTEGER, status TEXT);
        """)
        self.rows: list[tuple] = []
        self.n = 0

    def add(self, ex: Example, *, dedup: str, neg: str | None, tokens: int) -> None:
        line = (json.dumps(ex.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
        self.file.write(line)
        offset, self.offset = self.offset, self.offset + len(line)
        self.rows.append((self.n, offset, digest(dedup_key(ex, dedup)) if dedup != "off" else self.n,
                          digest(prompt_key(ex)), digest(normalize(ex.response)), ex.rating,
                          ex.created_at.isoformat() if ex.created_at else None, neg, tokens))
        self.n += 1
        if len(self.rows) >= 10000:
            self._flush()

    def _flush(self) -> None:
        self.db.executemany("INSERT INTO c VALUES (?,?,?,?,?,?,?,?,?,NULL)", self.rows)
        self.rows.clear()

    def resolve(self, conflict: str) -> None:
        self._flush()
        self.file.close()
        db = self.db
        db.executescript("""
            UPDATE c SET status = neg WHERE neg IS NOT NULL;
            CREATE INDEX c_dup ON c(dup) WHERE neg IS NULL;
            UPDATE c SET status = 'duplicate' WHERE neg IS NULL AND line NOT IN
                (SELECT MIN(line) FROM c WHERE neg IS NULL GROUP BY dup);
            CREATE INDEX c_prompt ON c(prompt, status);
        """)
        order = {"best_rating": "rating IS NULL, rating DESC, ts IS NULL, ts DESC, line DESC",
                 "latest": "ts IS NULL, ts DESC, line DESC", "drop": None}[conflict]
        conflicted = ("SELECT prompt FROM c WHERE status IS NULL GROUP BY prompt "
                      "HAVING COUNT(DISTINCT resp) > 1")
        if order is None:
            db.execute(f"UPDATE c SET status = 'conflict' WHERE status IS NULL AND prompt IN ({conflicted})")
        else:
            db.execute(f"""UPDATE c SET status = 'conflict' WHERE line IN (
                SELECT line FROM (SELECT line, ROW_NUMBER() OVER (PARTITION BY prompt ORDER BY {order}) AS r
                                  FROM c WHERE status IS NULL AND prompt IN ({conflicted})) WHERE r > 1)""")
        db.execute("UPDATE c SET status = 'kept' WHERE status IS NULL")
        db.commit()

    def results(self) -> Iterator[tuple[Example, str, int, bytes]]:
        """Every candidate in input order: the example, its status ('kept' or a filter name),
        its token count and its JSONL line (written as is: no second serialisation)."""
        with open(self.path, "rb") as f:
            for (status, tokens), line in zip(self.db.execute("SELECT status, tokens FROM c ORDER BY line"), f):
                yield Example.from_dict(json.loads(line)), status, tokens, line

    def negatives_for_kept(self) -> Iterator[tuple[Example, Example]]:
        """(kept answer, negative answer) for one prompt: the preference pairs."""
        q = """SELECT w.offset, MIN(n.offset) FROM c w JOIN c n ON n.prompt = w.prompt
               WHERE w.status = 'kept' AND n.neg IS NOT NULL AND n.resp != w.resp
               GROUP BY w.line, n.resp ORDER BY w.line"""
        with open(self.path, "rb") as f:
            for a, b in self.db.execute(q):
                yield self._at(f, a), self._at(f, b)

    def negatives(self) -> Iterator[tuple[Example, str]]:
        """(negative answer, its filter name): each once (by the dedup key), paired or not; not one
        that is also a kept answer to its prompt (liked and disliked at once says nothing)."""
        q = """SELECT MIN(n.offset), n.neg FROM c n WHERE n.neg IS NOT NULL AND NOT EXISTS
                   (SELECT 1 FROM c w WHERE w.prompt = n.prompt AND w.status = 'kept' AND w.resp = n.resp)
               GROUP BY n.dup ORDER BY MIN(n.line)"""
        with open(self.path, "rb") as f:
            for offset, neg in self.db.execute(q):
                yield self._at(f, offset), neg

    @staticmethod
    def _at(f, offset: int) -> Example:
        f.seek(offset)
        return Example.from_dict(json.loads(f.readline()))

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.db.close()


def preference(prompt: list[dict[str, str]], chosen: str, rejected: str, key: str, split: str,
               why: str) -> dict:
    """One pair in TRL's conversational preference format."""
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "key": key, "split": split, "from": why}


def unpaired(prompt: list[dict[str, str]], answer: str, key: str, split: str, why: str) -> dict:
    """One disliked answer in TRL's unpaired conversational format (KTO's ``label`` false)."""
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}], "label": False,
            "key": key, "split": split, "from": why}


def line_example(d: dict) -> Example:
    """A pairs or unpaired line as an Example, so tombstones can match it (conversation, text)."""
    answers = [m for side in ("chosen", "rejected", "completion") for m in d.get(side) or []]
    return Example(messages=[*(d.get("prompt") or []), *answers], conversation_id=d.get("key"))
