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
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

import orjson

from ftctl.config import CurateConfig
from ftctl.errors import ConfigError
from ftctl.records import Example
from ftctl.registry import seen

TOKEN_BINS = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)


# --- small pure functions ------------------------------------------------------------------


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


class Splitter:
    """train/val/test from a stable hash of the conversation: never moves between snapshots."""

    def __init__(self, salt: str, val: float, test: float):
        self.salt, self.val, self.test = f"{salt}\x00".encode(), val, test
        self.last: tuple[str | None, str] = (None, "")  # a conversation's rows arrive together
        # u = the digest's first 8 bytes / 2**64 (a power of two: scaling a float by it is exact, so
        # u < test <=> float(first 8 bytes) < test * 2**64; the int division cost twice the hash)
        self._test, self._test_val = test * 2.0**64, (test + val) * 2.0**64

    def __call__(self, key: str) -> str:
        if key == self.last[0]:
            return self.last[1]
        x = float(_FIRST_8(hashlib.sha256(self.salt + key.encode()).digest())[0])
        split = "test" if x < self._test else "val" if x < self._test_val else "train"
        self.last = (key, split)
        return split


_FIRST_8 = struct.Struct(">Q").unpack_from  # int.from_bytes(digest[:8], "big"), without the slice


def split_of(key: str, salt: str, val: float, test: float) -> str:
    return Splitter(salt, val, test)(key)


def prompt_messages(ex: Example) -> list[dict[str, str]]:
    """The conversation before the final answer."""
    msgs = ex.messages
    return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else list(msgs)


def _joined(messages: list[dict[str, str]]) -> str:
    # NUL/SOH separators: not in chat text and not whitespace (so normalize keeps them); cheaper than JSON
    return "\x00".join(f"{m['role']}\x01{m['content']}" for m in messages)


def prompt_key(ex: Example) -> str:
    return normalize(_joined(prompt_messages(ex)))


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


def texts_to_scrub(ex: Example, original: str | None) -> list[str]:
    """The row's long texts that :func:`scrub_row` will scrub (its turns and the corrected
    original), for scrubbing a batch of rows at once ahead of it; the rest is short."""
    return [m.get("content") or "" for m in ex.messages] + ([original] if original else [])


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


NEGATIVE = frozenset(("min_rating", "min_reward", "negative_feedback"))  # the filters that find a dislike


def negative_reason(ex: Example, cfg: CurateConfig) -> str | None:
    """Why this answer must not be trained on (it may still serve as a rejected answer).
    (Filters.reason has the same rules inlined.)"""
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
    return whitespace_tokens, "whitespace*4/3"


def whitespace_tokens(text: str) -> int:
    """ceil(words * 4 / 3), in ints."""
    return (len(text.split()) * 4 + 2) // 3


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
        # read once: reason() runs for every row, and a pydantic attribute costs a lookup each time
        self.min_rating, self.min_reward = cfg.min_rating, cfg.min_reward
        self.min_tokens, self.max_tokens = cfg.min_tokens, cfg.max_tokens
        self.reason = self._reason()

    def _reason(self) -> Callable[[Example], tuple[str | None, int]]:
        """``reason``: a closure over the settings (a closure's cell costs a fraction of an
        attribute lookup, and this runs for every row)."""
        start, end, agents, golden, count = self.start, self.end, self.agents, self.golden, self.count
        min_rating, min_reward, min_tokens, max_tokens = self.min_rating, self.min_reward, self.min_tokens, self.max_tokens
        window = start is not None or end is not None
        # the approximate count summed message by message, with no joined copy (a fifth of a
        # counted row's filter time)
        words = count is whitespace_tokens

        def reason(ex: Example) -> tuple[str | None, int]:
            """(filter name or None, token count); negatives are recognised by :func:`negative_reason`."""
            if window:
                t = ex.created_at
                if t is None or (start and t < start) or (end and t > end):
                    return "window", 0
            if agents is not None and ex.agent not in agents:
                return "agent_type", 0
            if golden and (ex.key in golden or prompt_key(ex) in golden):
                return "golden", 0
            meta = ex.meta
            if not (meta and meta.get("corrected")):  # negative_reason, inlined
                if (ft := ex.feedback_type) is not None and ft == "thumbs_down":  # None == str costs a slow compare
                    return "negative_feedback", 0
                if min_rating is not None and (rating := ex.rating) is not None and rating < min_rating:
                    return "min_rating", 0
                if min_reward is not None and (reward := ex.reward) is not None and reward < min_reward:
                    return "min_reward", 0
            # a blank answer is read (its rating is evidence for a canary) and, rated down, kept aside
            # as a disliked answer (DPO/KTO learn against answering nothing); never a target
            last = ex.messages[-1]
            if last["role"] == "assistant" and (not (c := last["content"]) or c.isspace()) and not last.get("tool_calls"):
                return "empty_answer", 0
            if words:  # whitespace_tokens of the newline-joined text: no word spans a newline
                n = 0
                for m in ex.messages:
                    n += len(m["content"].split())
                n = (n * 4 + 2) // 3
            else:
                n = count("\n".join([m["content"] for m in ex.messages]))  # the messages' text, newline-joined
            if min_tokens is not None and n < min_tokens:
                return "min_tokens", n
            if max_tokens is not None and n > max_tokens:
                return "max_tokens", n
            return None, n

        return reason


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


# --- the spill: dedup and conflicts over any number of rows ------------------------------

# One fixed-width record per spilled row; numpy reads the file back as one structured array
_RECORD = [("offset", "<i8"), ("dup", "<i8"), ("prompt", "<i8"), ("resp", "<i8"), ("rating", "<f8"),
           ("ts", "<f8"), ("tokens", "<i4"), ("agent", "<i4"), ("served", "<i4"), ("neg", "<i2"), ("split", "<i1")]
_PACK = struct.Struct("<qqqqddiiihb")
SPLIT_NAMES = ("train", "val", "test")
# row statuses in the resolved array: kept, then the reasons a candidate is dropped
KEPT, DUPLICATE, CONFLICT, LIMIT = 0, 1, 2, 3
_STATUS = ("kept", "duplicate", "conflict", "limit")


class Spill:
    """Candidates go to a JSONL file as they arrive, their keys to a file of fixed-width records;
    :meth:`resolve` reads the keys back into numpy and decides duplicates, conflicts, the limit
    and the disliked answers to keep with sorts over whole columns, and :meth:`write` copies each
    line to its file in one sequential pass.

    The rows themselves stay on disk: a row's keys cost 55 bytes (55 MB at a million rows), and a
    row is serialised once, in its final form: a candidate as its snapshot line, a disliked answer
    as its ``unpaired.jsonl`` line. (SQLite did the grouping before: its inserts, index upkeep
    and UPDATEs cost tens of microseconds a row; a sort of a numpy column costs a fraction of one.)
    """

    def __init__(self, directory: Path, split: Callable[[str], str], dedup: str = "normalized"):
        self.path, self.keys_path = directory / "candidates.jsonl", directory / "candidates.keys"
        self.file, self.keys = open(self.path, "wb"), open(self.keys_path, "wb")
        self.offset = self.n = 0
        self.keybuf = bytearray()  # written a megabyte at a time
        # the first-seen ledger's id (registry/seen.py) of each liked row of the train split, 12
        # bytes each, in order: taken while the row is in memory, not read back from the snapshot
        self.ids = bytearray()
        self.split, self.dedup = split, dedup
        self.codes: dict[str, dict] = {"neg": {None: 0}, "agent": {None: -1}, "served": {None: -1}}
        self.negs, self.agents, self.served = self.codes["neg"], self.codes["agent"], self.codes["served"]
        self.r = self.status = None  # the keys and each row's status (numpy arrays), after resolve()

    def _code(self, kind: str, value) -> int:
        codes = self.codes[kind]
        code = codes.get(value)
        if code is None:
            code = codes[value] = len(codes) - (kind != "neg")
        return code

    def add(self, ex: Example, *, neg: str | None, tokens: int) -> str:
        """Spill ``ex`` (``neg``: the filter that found it disliked); returns its split."""
        return self.add_many([(ex, neg, tokens)])[0]

    def add_many(self, rows: list[tuple[Example, str | None, int]]) -> list[str]:
        """Spill each ``(example, neg, tokens)`` of ``rows`` as :meth:`add` does; returns their
        splits. A batch at a time: the per-row work stays in one loop, its lines in one write."""
        split_of, dedup, n, offset = self.split, self.dedup, self.n, self.offset
        negs, agents, served, code, pack = self.negs, self.agents, self.served, self._code, _PACK.pack
        digest = seen.line_digest
        lines, keys, splits, ids = [], [], [], []
        last_key = split = split_code = None
        for ex, neg, tokens in rows:
            msgs = ex.messages
            last = msgs[-1] if msgs and msgs[-1]["role"] == "assistant" else None
            if last is None:
                prompt, answer = _joined(msgs), ex.response
            else:
                # the common one-turn conversation without _joined's generator
                prompt = (f"{msgs[0]['role']}\x01{msgs[0]['content']}" if len(msgs) == 2 else _joined(msgs[:-1]))
                answer = (last["content"] or "") if not last.get("tool_calls") else _answer(last)
            # normalize(), inlined. Python's own str hash: the keys live for one process only, and
            # a 64-bit hash collides about as rarely as a 64-bit digest (~1e-8 at a million rows)
            # at a tenth of the cost; only equality matters (resolve orders by line, not by hash)
            norm_prompt, norm_answer = " ".join(prompt.split()).casefold(), " ".join(answer.split()).casefold()
            if dedup == "normalized":
                dup = hash((norm_prompt, norm_answer if last else None))
            elif dedup == "exact":
                dup = hash((prompt, answer if last else None))
            else:
                dup = n
            key = ex.conversation_id or f"{ex.source}:{ex.source_id}"  # Example.key
            if key != last_key:  # a conversation's rows arrive together
                last_key, split = key, split_of(key)
                split_code = _SPLIT[split]
            if neg:  # never a training target: what is kept of it is its unpaired.jsonl line
                line = orjson.dumps(unpaired(msgs[:-1] if last else list(msgs),
                                             last["content"] if last else ex.response, key, split, neg))
            else:
                line = ex.to_json()
                if split_code == 0:  # the ledger's id while the row is in memory (no second read)
                    ids.append(digest(msgs, ex.correction, line))
            lines.append(line)
            t, agent, model, rating = ex.created_at, ex.agent, ex.served_model, ex.rating
            a, s, g = agents.get(agent), served.get(model), negs.get(neg)
            keys.append(pack(
                offset, dup, hash(norm_prompt), hash(norm_answer), _NAN if rating is None else rating,
                t.timestamp() if t else _NAN, tokens,
                code("agent", agent) if a is None else a, code("served", model) if s is None else s,
                code("neg", neg) if g is None else g, split_code))
            offset += len(line) + 1
            n += 1
            splits.append(split)
        if lines:
            self.file.write(b"\n".join(lines) + b"\n")
        self.keybuf += b"".join(keys)
        self.ids += b"".join(ids)
        if len(self.keybuf) > 1 << 20:  # the keys go to disk a megabyte at a time
            self.keys.write(self.keybuf)
            self.keybuf.clear()
        self.offset, self.n = offset, n
        return splits

    def resolve(self, conflict: str, limit: int | None = None) -> None:
        """Every row's status: its negative filter, else duplicate (not the first of its dedup
        key), conflict (not the winner among the different answers to one prompt), limit (past
        the first ``limit`` kept rows), or kept; and which disliked answers go to unpaired.jsonl."""
        import numpy as np

        self.keys.write(self.keybuf)
        self.file.close()
        self.keys.close()
        r = self.r = np.fromfile(self.keys_path, dtype=np.dtype(_RECORD))
        line = np.arange(len(r))
        negs = len(self.codes["neg"]) - 1
        status = self.status = np.where(r["neg"] > 0, r["neg"].astype(np.int16) + LIMIT, -1).astype(np.int16)
        liked = np.flatnonzero(r["neg"] == 0)
        _, first = np.unique(r["dup"][liked], return_index=True)  # the first occurrence (a stable sort)
        status[liked] = DUPLICATE
        status[liked[first]] = -1
        # conflicts: among what is left, prompts with more than one distinct answer
        left = np.flatnonzero(status == -1)
        prompt, resp = r["prompt"][left], r["resp"][left]
        by = np.lexsort((resp, prompt))
        p, a = prompt[by], resp[by]
        new_pair = np.ones(len(by), bool)
        new_pair[1:] = (p[1:] != p[:-1]) | (a[1:] != a[:-1])
        starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]] if len(p) else np.zeros(0, bool))
        answers = np.add.reduceat(new_pair.astype(np.int64), starts) if len(starts) else np.zeros(0, int)
        torn = _member(prompt, p[starts[answers > 1]])
        if torn.any():
            rows = left[torn]
            status[rows] = CONFLICT
            if conflict != "drop":  # the winner of each prompt: the first in the rule's order
                rating, ts = r["rating"][rows], r["ts"][rows]
                keys = [-line[rows], np.nan_to_num(-ts), np.isnan(ts)]
                if conflict == "best_rating":
                    keys += [np.nan_to_num(-rating), np.isnan(rating)]
                order = np.lexsort((*keys, r["prompt"][rows]))
                ps = r["prompt"][rows][order]
                winners = rows[order[np.r_[True, ps[1:] != ps[:-1]]]]
                status[winners] = -1
        status[status == -1] = KEPT
        # every disliked answer once (by the dedup key), paired or not; not one that is also a
        # kept answer to its prompt (liked and disliked at once says nothing)
        self.unpaired = np.zeros(len(r), bool)
        if negs:
            kept, bad = status == KEPT, np.flatnonzero(r["neg"] > 0)
            both = _pair(r["prompt"], r["resp"])
            bad = bad[~_member(both[bad], both[kept])]
            _, first = np.unique(r["dup"][bad], return_index=True)
            self.unpaired[bad[first]] = True
        self.liked = status == KEPT  # before the limit: the limit caps the examples, not the pairs
        if limit is not None:
            kept = np.flatnonzero(status == KEPT)
            status[kept[limit:]] = LIMIT

    def filtered(self) -> Counter:
        """Rows not kept, by status (the filter's name, 'duplicate', 'conflict', 'limit')."""
        import numpy as np

        names = {**dict(enumerate(_STATUS)), **{c + LIMIT: n for n, c in self.codes["neg"].items() if c}}
        counts = np.bincount(self.status, minlength=len(names))
        return Counter({names[i]: int(n) for i, n in enumerate(counts) if n and i != KEPT})

    def kept(self) -> dict[str, Counter]:
        """The kept rows' figures for the card: rows per split, token bin, rating, agent and
        served model (None: no value)."""
        import numpy as np

        r = self.r[self.status == KEPT]
        names = {k: {c: v for v, c in codes.items()} for k, codes in self.codes.items()}
        out = {"split": Counter(), "tokens": Counter(), "rating": Counter(), "agent": Counter(), "served": Counter()}
        for column, counter, name in (("split", "split", SPLIT_NAMES.__getitem__),
                                      ("tokens", "tokens", bin_of), ("rating", "rating", None),
                                      ("agent", "agent", names["agent"].get), ("served", "served", names["served"].get)):
            values, counts = np.unique(r[column], return_counts=True, equal_nan=False)
            for v, n in zip(values.tolist(), counts.tolist()):
                key = (None if v != v else v) if name is None else name(v)
                out[counter][key] += n
        return out

    def write(self, splits: dict[str, BinaryIO], unpaired: BinaryIO) -> tuple[int, int]:
        """Each kept row to its split's file and each disliked answer to keep to ``unpaired``, in
        input order, as the lines were spilled (no second serialisation); returns the counts."""
        import numpy as np

        # one byte a row: 0 skip, 1..3 a split, 4 unpaired.jsonl
        to = np.where(self.status == KEPT, self.r["split"] + 1, np.where(self.unpaired, 4, 0)).astype(np.uint8)
        files = (None, splits["train"], splits["val"], splits["test"], unpaired)
        with open(self.path, "rb") as f:
            for where, line in zip(to.tobytes(), f):
                if where:
                    files[where].write(line)
        return int(np.count_nonzero((to > 0) & (to < 4))), int(np.count_nonzero(to == 4))

    def train_ids(self) -> list[str]:
        """The first-seen ledger's ids (registry/seen.py ``row_id``) of the rows :meth:`write`
        wrote to the train split, in its order."""
        import numpy as np

        r = self.r
        liked_train = (r["neg"] == 0) & (r["split"] == 0)  # the rows self.ids holds, in order
        hexed = np.frombuffer(self.ids, "V12")[self.status[liked_train] == KEPT].tobytes().hex()
        return [hexed[i:i + 24] for i in range(0, len(hexed), 24)]

    def statuses(self) -> list[str]:
        """Every row's status, in input order (for tests and small inspections)."""
        names = {**dict(enumerate(_STATUS)), **{c + LIMIT: n for n, c in self.codes["neg"].items() if c}}
        return [names[s] for s in self.status.tolist()]

    def negatives_for_kept(self) -> Iterator[tuple[Example, str]]:
        """(kept example, a disliked answer to its prompt): the preference pairs, one per distinct
        disliked answer, in input order (the limit caps the examples, not the pairs)."""
        import numpy as np

        r = self.r
        good, bad = np.flatnonzero(self.liked), np.flatnonzero(r["neg"] > 0)
        shared = np.intersect1d(_distinct(r["prompt"][good]), _distinct(r["prompt"][bad]), assume_unique=True)
        if not len(shared):
            return
        good, bad = good[_member(r["prompt"][good], shared)], bad[_member(r["prompt"][bad], shared)]
        _, first = np.unique(_pair(r["prompt"][bad], r["resp"][bad]), return_index=True)
        bad = bad[np.sort(first)]  # one row per distinct disliked answer to a prompt: its first
        bad = bad[np.argsort(r["prompt"][bad], kind="stable")]
        lo = np.searchsorted(r["prompt"][bad], r["prompt"][good], "left")
        hi = np.searchsorted(r["prompt"][bad], r["prompt"][good], "right")
        g = np.repeat(good, hi - lo)
        b = bad[np.concatenate([np.arange(a, z) for a, z in zip(lo.tolist(), hi.tolist())])]
        keep = r["resp"][g] != r["resp"][b]
        g, b = g[keep], b[keep]
        order = np.lexsort((b, g))
        with open(self.path, "rb") as f:
            for i, j in zip(g[order].tolist(), b[order].tolist()):
                yield (Example.from_json(self._at(f, int(r["offset"][i]))),
                       orjson.loads(self._at(f, int(r["offset"][j])))["completion"][0]["content"])

    @staticmethod
    def _at(f, offset: int) -> bytes:
        f.seek(offset)
        return f.readline()

    def close(self) -> None:
        for f in (self.file, self.keys):
            if not f.closed:
                f.close()


_NAN = float("nan")
_SPLIT = {name: i for i, name in enumerate(SPLIT_NAMES)}


def _answer(message: dict) -> str:
    """An assistant turn's text for the keys: its content, and its tool calls when it makes any."""
    calls = message.get("tool_calls")
    content = message.get("content") or ""
    return content + "\x00" + orjson.dumps(calls).decode() if calls else content


# numpy 2's np.unique without indices (and so np.isin, np.intersect1d) goes through a hash
# table: ~0.5 us an element for 64-bit keys, a tenth of a second per 200k rows; sorting is a
# tenth of that (the same values out). Hand-written for that reason only.
def _distinct(values):
    """``np.unique(values)`` by a sort."""
    import numpy as np

    s = np.sort(values)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def _member(values, of):
    """``np.isin(values, of)`` by sorts and a merge-like search (both sides sorted)."""
    import numpy as np

    out = np.zeros(len(values), bool)
    if not len(values) or not len(of):
        return out
    table, order = np.sort(of), np.argsort(values)
    v = values[order]
    at = np.searchsorted(table, v)
    at[at == len(table)] = 0
    out[order] = table[at] == v
    return out


def _pair(prompt, resp):
    """One 64-bit key for a (prompt, answer) pair of hashes (wrapping arithmetic, as hashes mix)."""
    import numpy as np

    return prompt.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ resp.view(np.uint64)


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
