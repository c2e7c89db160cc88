"""`ftctl collect`: sources -> curation -> a versioned dataset snapshot in data/<model>/.

Every row read is accounted for: kept (in a split), filtered (by a named filter) or rejected
(with file:line or primary key and a reason, in rejects.jsonl); ``read == kept +
sum(filtered) + sum(rejected)`` always holds, and is checked before anything is recorded.

Incremental: each source remembers a watermark in models.lock; the next collect reads only
newer rows and carries the previous snapshot forward (re-curated: filters, dedup and the
stable split apply to the whole), so a snapshot is always the full dataset. ``since="all"``
rebuilds from scratch.

Besides the splits: ``preferences.jsonl`` (pairs: a correction or a kept answer over a disliked
one to the same prompt) and ``unpaired.jsonl`` (every disliked answer, paired or not, with
``label: false``: what KTO learns "thumbs down" from). Their disliked sides are in no split, so
an incremental collect carries both files forward, minus what was forgotten since.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shutil
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from ftctl import plugins

from ftctl.data import curate, scrub_check
from ftctl.lib.scrub import ScrubError
from ftctl.registry import seen
from ftctl.registry.served import Attribution, Resolver
from ftctl.errors import FtctlError
from ftctl.lib.chat_format import renders_tool_calls, uses_tools
from ftctl.lib.digest import file_sha256
from ftctl.records import Reject, read_jsonl
from ftctl.registry.workspace import SNAPSHOT_FILES as FILES
from ftctl.registry.workspace import SPLITS, Workspace, dvc_md5, locked

CARRIED = "previous-snapshot"


class RejectedRows(FtctlError):
    """--strict: some input rows were rejected."""


@locked
def collect(ws: Workspace, model: str | None = None, dry_run: bool = False, since: str | None = None,
            strict: bool = False, log=print, card_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    mc = ws.model(model)
    name = mc.name
    if not mc.sources:
        raise FtctlError(f"model {name!r} has no sources", hint="add a `sources:` entry to ftctl.yaml")
    lock = ws.read_lock()
    state = lock.models.get(name)
    marks = {} if since == "all" or state is None else dict(state.watermarks)
    if since not in (None, "all"):
        from ftctl.records import RowError
        from ftctl.lib.times import parse_time

        try:
            since = parse_time(since).isoformat()
        except RowError:
            raise FtctlError(f"--since {since!r} is not a date/time", hint="e.g. 2024-05-01, or `all`") from None
        marks = {s.name: since for s in mc.sources}
    carry = ws.data_dir(name) if since != "all" and any(marks.values()) else None
    if carry is not None and not (carry / FILES["train"]).is_file():
        # sources would yield only rows newer than their watermarks: without the previous
        # snapshot to carry forward, the new one would silently lose everything before
        raise FtctlError(f"the previous snapshot of {name!r} is not in the work tree ({ws.rel(carry)})",
                         hint="run `dvc pull` (or `ftctl checkout`), or rebuild with --since all")

    work = ws.state_dir / "tmp" / f"collect-{name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    out = work / "snapshot"
    out.mkdir(parents=True)
    try:
        with _rare_collections():
            card = _curate(ws, mc, out, work, marks, carry, log)
        if card_extra:  # e.g. cycle's drift report: it belongs to the snapshot's card
            card.update(card_extra)
            (out / FILES["card"]).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        result = _result(ws, name, card, out if dry_run else ws.data_dir(name))
        try:  # before anything is recorded: a scrubber that ate the answers stops the loop here
            scrub_check.report(card, log)
        except scrub_check.ScrubTooHeavy as e:
            e.result = {**result, "snapshot": None, "rejects_file": None}
            raise
        if strict and card["rejected"]:
            keep = ws.state_dir / f"rejects-{name}.jsonl"
            shutil.copyfile(out / FILES["rejects"], keep)
            raise RejectedRows(f"--strict: {sum(card['rejected'].values())} row(s) rejected "
                               f"({', '.join(f'{k}: {v}' for k, v in card['rejected'].items())})",
                               hint=f"see {ws.rel(keep)}; nothing was written")
        if dry_run:
            result["snapshot"] = None
            result["rejects_file"] = None
            return result
        _publish(ws, name, out, card)
        result["snapshot"] = ws.rel(ws.data_dir(name))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


SCRUB_BATCH = 256  # rows whose texts go through the scrubber together (Scrubber.warm)


@contextmanager
def _rare_collections(every: int = 50_000):
    """The cyclic garbage collector run every ``every`` allocations instead of every 700, while
    curating: a row's objects die young, but a batch of rows is alive whenever it runs, and
    scanning them again and again cost a tenth of curation's time (cycles are still collected, later)."""
    threshold = gc.get_threshold()
    gc.set_threshold(max(every, threshold[0]), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


def _chunks(items, n: int):
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _curate(ws: Workspace, mc, out: Path, work: Path, marks: dict[str, str], carry: Path | None, log) -> dict:
    cfg = mc.curate
    stamp = datetime.now(timezone.utc)
    count_tokens, counted_with = curate.token_counter(_tokenizer_json(ws, mc.base))
    golden, n_golden = curate.golden_keys(ws.root / cfg.golden) if cfg.golden else (set(), 0)
    filters = curate.Filters(cfg, count_tokens, stamp, golden)
    scrubber, pii = _scrubber(ws, cfg.scrub)
    check = scrub_check.ScrubCheck.of(cfg.scrub) if scrubber else None
    # the previous snapshot was scrubbed with these very settings: scrubbing it again is waste
    rescrub_carried = pii != _card_of(carry).get("pii")
    from ftctl.data.tombstones import of_workspace

    forgotten = of_workspace(ws)  # refuses when the workspace secret does not match its tombstones

    read, filtered, rejected, scrubbed, rewarded = 0, Counter(), Counter(), Counter(), Counter()
    keep_negative, negative, reason_of = cfg.keep_negative, curate.NEGATIVE, filters.reason  # looked up per row
    reward = plugins.rewarder()
    tools_ok: str | None = None  # "" once the base's template is known to render tool calls; else why not
    per_source: dict[str, dict] = {}
    split_of = curate.Splitter(cfg.split.salt, cfg.split.val, cfg.split.test)
    spill = curate.Spill(work, split_of, cfg.dedup)
    prefs = open(out / FILES["preferences"], "wb")
    unpaired = open(out / FILES["unpaired"], "wb")
    try:
        n_prefs = _carry(carry, "preferences", prefs, forgotten, log)
        n_unpaired = _carry(carry, "unpaired", unpaired, forgotten, log)
        with open(out / FILES["rejects"], "w", encoding="utf-8") as rejects:
            for src_name, items, plugin, mark in _streams(ws, mc, marks, carry, log):
                n_read = 0
                fresh = src_name != CARRIED
                scrub_now = scrubber is not None and (fresh or rescrub_carried)
                for chunk in _chunks(items, SCRUB_BATCH):
                    n_read += len(chunk)
                    # rows past the filters, as the spill takes them (scrubbed together: spaCy runs
                    # once per batch), and the corrected originals by position (rare)
                    pending, originals = [], {}
                    for item in chunk:
                        if not isinstance(item, Reject) and uses_tools(item.messages, item.tools):
                            if tools_ok is None:
                                tools_ok = _tool_support(ws, mc)
                            if tools_ok:
                                item = Reject(src_name, item.source_id or item.key, "tool_calls_unsupported", tools_ok)
                        if isinstance(item, Reject):
                            rejected[item.reason] += 1
                            rejects.write(json.dumps(_reject_line(item, scrubber), ensure_ascii=False) + "\n")
                            continue
                        if mark and item.created_at and item.created_at.isoformat() <= mark and fresh:
                            filtered["already_collected"] += 1
                            continue
                        if forgotten and forgotten.matches(item):  # `ftctl forget`: never collected again
                            filtered["forgotten"] += 1
                            continue
                        if item.reward is None and fresh:  # the reward hooks: thumbs, edit, ...
                            value, who = reward(item)
                            if value is not None:
                                item.reward = value
                                rewarded[who] += 1
                        ex, original = curate.apply_correction(item) if item.correction else (item, None)
                        reason, tokens = reason_of(ex)
                        if reason and not (keep_negative and reason in negative):
                            filtered[reason] += 1
                            continue
                        if original is not None:
                            originals[len(pending)] = original
                        pending.append((ex, reason, tokens))
                    if scrub_now:
                        pending, originals = _scrub(pending, originals, scrubber, check, cfg.scrub.on_error, src_name,
                                                    rejected, scrubbed, rejects)
                    splits = spill.add_many(pending)
                    for i, original in originals.items():
                        ex, split = pending[i][0], splits[i]
                        if original and original != ex.response:
                            prompt = curate.prompt_messages(ex)
                            prefs.write(orjson.dumps(curate.preference(
                                prompt, ex.response, original, ex.key, split, "correction")) + b"\n")
                            n_prefs += 1
                            # the corrected original is a disliked answer too (no row of its own in the spill)
                            unpaired.write(orjson.dumps(curate.unpaired(
                                prompt, original, ex.key, split, "correction")) + b"\n")
                            n_unpaired += 1
                wm = plugin.watermark() if plugin else None
                per_source[src_name] = {"read": n_read, "watermark": wm or mark}
                read += n_read
                log(f"{src_name}: {n_read} rows read")
        spill.resolve(cfg.conflict, cfg.limit)
        filtered.update(spill.filtered())
        writers = {s: open(out / FILES[s], "wb") for s in SPLITS}
        try:  # every disliked answer once, paired or not: KTO reads these, not the pairs
            kept, n = spill.write(writers, unpaired)
            n_unpaired += n
        finally:
            for w in writers.values():
                w.close()
        figures = spill.kept()
        splits, bins = figures["split"], [0] * len(curate.TOKEN_BINS)
        for tokens, n in figures["tokens"].items():
            bins[tokens] += n
        ratings = Counter({"unrated" if r is None else f"{r:g}": n for r, n in figures["rating"].items()})
        agents = Counter()
        for agent, n in figures["agent"].items():
            agents[agent or "none"] += n
        state = ws.read_lock().models.get(mc.name)
        resolve, served = Resolver.of(mc.name, state), Attribution()
        for served_model, n in figures["served"].items():
            served.add(served_model, resolve(served_model), n)
        for good, bad in spill.negatives_for_kept():
            prefs.write(orjson.dumps(curate.preference(curate.prompt_messages(good), good.response, bad, good.key,
                                                       split_of(good.key), "rating")) + b"\n")
            n_prefs += 1
    finally:
        spill.close()
        prefs.close()
        unpaired.close()

    card = {
        "model": mc.name, "created": stamp.isoformat(),  # full precision: drift splits feedback at this moment
        "read": read, "kept": kept,
        "filtered": dict(sorted(filtered.items())), "rejected": dict(sorted(rejected.items())),
        "scrubbed": dict(sorted(scrubbed.items())),
        "splits": {s: splits[s] for s in SPLITS}, "preferences": n_prefs,
        "unpaired": n_unpaired,  # disliked answers (in `filtered` under their filter, or corrected originals)
        "tokens": {"counted_with": counted_with, "histogram": curate.histogram(bins)},
        "ratings": dict(sorted(ratings.items())), "agents": dict(sorted(agents.items())),
        "rewarded": dict(sorted(rewarded.items())),  # rows given a reward by a reward hook, per plugin
        "served": served.to_dict(),
        "sources": per_source,
        "window": {k: v.isoformat() if v else None for k, v in zip(("start", "end"), (filters.start, filters.end))},
        "filters": cfg.model_dump(mode="json", exclude={"scrub", "split", "collect_before_train"}),
        "split": cfg.split.model_dump(mode="json"), "golden": {"path": cfg.golden, "examples": n_golden},
        "pii": pii,
        "scrub_check": check.to_card() if check else None,
    }
    if served.unmatched:  # kept and counted, but say so: a deploy alias or a source mapping is off
        log(f"[yellow]{sum(served.unmatched.values())} kept row(s) name a served model that matches no version "
            f"of {mc.name}: {', '.join(list(served.unmatched)[:5])}[/] (counted as `served.unmatched` in the card)")
    # when each train row first entered a snapshot, carried from the current one (a rebuild too)
    ledger = seen.write(spill.train_ids(), out / FILES["seen"], seen.read(ws.data_dir(mc.name) / FILES["seen"]),
                        card["created"])
    versions = ws.read_lock().state(mc.name).versions
    card["first_seen"] = seen.first_seen(ledger, versions)  # train rows per version that saw them first
    total = kept + sum(filtered.values()) + sum(rejected.values())
    if total != read:  # a bug, never a data problem: refuse to record an unbalanced card
        raise FtctlError(f"internal accounting error: read {read} != kept+filtered+rejected {total}")
    (out / FILES["card"]).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return card


def _scrub(pending: list, originals: dict, scrubber, check, on_error: str, src_name: str, rejected: Counter,
           scrubbed: Counter, rejects) -> tuple[list, dict]:
    """A batch of rows through the scrubber (their texts analysed together first): the rows kept,
    scrubbed, and their corrected originals; a row that fails, or is left as placeholders only, is
    rejected (counted, and written to ``rejects``)."""
    scrubber.warm(t for i, (ex, _, _) in enumerate(pending) for t in curate.texts_to_scrub(ex, originals.get(i)))
    kept, kept_originals = [], {}
    for i, (ex, reason, tokens) in enumerate(pending):
        try:
            found: Counter = Counter()  # counted only once the whole row is scrubbed
            before = ex.messages  # scrub_row gives the row new messages
            ex, original = curate.scrub_row(ex, originals.get(i), lambda t: scrubber.scrub(t, found))
        except Exception as e:  # fail closed: a row not fully scrubbed is never kept
            if on_error == "fail":
                raise FtctlError(f"scrubbing {src_name} {ex.source_id or ex.key} failed: {e}",
                                 hint="curate.scrub.on_error: reject skips such rows instead") from e
            why = e.reason if isinstance(e, ScrubError) else "scrub_error"  # or too_large
            rejected[why] += 1
            rejects.write(json.dumps(Reject(src_name, ex.source_id or ex.key, why, type(e).__name__).to_dict()) + "\n")
            continue
        if check.add(before, ex.messages):  # nothing left to learn from: never trained on
            rejected[scrub_check.REJECT] += 1
            rejects.write(json.dumps(Reject(src_name, ex.source_id or ex.key, scrub_check.REJECT,
                                            "every assistant answer became placeholders only").to_dict()) + "\n")
            continue
        scrubbed.update(found)
        if i in originals:
            kept_originals[len(kept)] = original
        kept.append((ex, reason, tokens))
    return kept, kept_originals


SCRUBBED_FIELDS = ["messages", "correction", "meta", "rejects.detail"]


def _scrubber(ws: Workspace, sc) -> tuple[Any, dict[str, Any]]:
    """The scrubber (None when off) and the card's record of what it scrubs (no values)."""
    if not sc.enabled:
        return None, {"enabled": False, "on_error": sc.on_error}
    from ftctl.lib.scrub import Scrubber

    site = ws.root / sc.recognizers if sc.recognizers else None
    scrubber = Scrubber(sc.types, sc.names, ws.cache_dir, recognizers=site, root=ws.root, keep=sc.keep,
                        max_chars=sc.max_chars)
    # `fields`: what is scrubbed; a snapshot from before correction and meta were (no `fields`)
    # differs, so its carried rows are scrubbed again
    return scrubber, {"enabled": True, **scrubber.describe(), "on_error": sc.on_error, "fields": SCRUBBED_FIELDS}


def _reject_line(item: Reject, scrubber) -> dict[str, Any]:
    """A rejects.jsonl line. The built-in sources describe a value without quoting it; a
    third-party source's detail may quote one, so it is scrubbed too (dropped when the scrubber
    fails on it: the reason and the place are what a person needs to find the row)."""
    d = item.to_dict()
    if scrubber and d.get("detail"):
        try:
            d["detail"] = scrubber.scrub(str(d["detail"]), Counter())
        except Exception:  # noqa: BLE001 (fail closed: never the raw detail)
            d["detail"] = "(withheld: the scrubber could not process it)"
    return d


def _card_of(snapshot: Path | None) -> dict[str, Any]:
    try:
        return json.loads((snapshot / FILES["card"]).read_text(encoding="utf-8")) if snapshot else {}
    except (OSError, ValueError):
        return {}


def _carry(carry: Path | None, name: str, out, forgotten, log) -> int:
    """The previous snapshot's pairs or unpaired answers: their disliked answers are in no split
    to rebuild them from, so they are copied, except what `ftctl forget` erased since."""
    if carry is None:
        return 0
    path = carry / FILES[name]
    if not path.is_file():  # a snapshot from before the file existed: say what the new one lacks
        log(f"[yellow]the previous snapshot has no {FILES[name]}: its disliked answers are not carried[/] "
            f"(rebuild with `ftctl collect --since all`)")
        return 0
    n, dropped = 0, 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                gone = bool(forgotten) and forgotten.matches(curate.line_example(json.loads(line)))
            except (ValueError, TypeError, AttributeError):
                raise FtctlError(f"{path}:{lineno}: not a line collect wrote",
                                 hint="fix or remove it, or rebuild with `ftctl collect --since all`") from None
            if gone:
                dropped += 1
                continue
            out.write(line)
            n += 1
    if dropped:
        log(f"{FILES[name]}: {dropped} carried line(s) dropped (forgotten)")
    return n


def _streams(ws: Workspace, mc, marks: dict[str, str], carry: Path | None, log):
    """(source name, items, plugin, watermark) for the previous snapshot, then each source."""
    if carry is not None:
        def previous():
            for s in SPLITS:
                if (carry / FILES[s]).is_file():
                    yield from read_jsonl(carry / FILES[s])
        yield CARRIED, previous(), None, None
    for i, src in enumerate(mc.sources):
        ctx = ws.context(mc.name, log, instance=src.name)
        plugin = plugins.build("source", src.kind, src.plugin_config(), ctx,
                               key=f"models.{mc.name}.sources[{i}]")
        mark = marks.get(src.name)
        yield src.name, plugin.read(mark), plugin, mark


def _tokenizer_json(ws: Workspace, base: str) -> Path | None:
    """The base model's tokenizer.json when it is on disk already (never converts a base:
    collecting must not load torch); None means the whitespace approximation."""
    from ftctl.lib import basemodel
    from ftctl.lib.digest import file_sha256

    try:
        path = basemodel.locate(base, ws.root)
        if path.is_dir():
            return path / "tokenizer.json"
        if path.is_file():
            return basemodel.cache_root() / file_sha256(path) / "tokenizer.json"
    except FtctlError:
        pass
    return None


def _tool_support(ws: Workspace, mc) -> str:
    """"" when the chat template training will use renders tool calls; else the reason a row with
    tool calls is rejected (it would be trained on text that lacks the call)."""
    from ftctl.lib import basemodel

    template = mc.train.plugin_config(mc.train.trainer).get("chat_template")
    where = f"train.{mc.train.trainer}.chat_template"
    if not template:
        where = f"the chat template of {mc.base}"
        try:
            path = basemodel.locate(mc.base, ws.root)
            folder = path if path.is_dir() else basemodel.cache_root() / file_sha256(path)
            template = _template_in(folder)
        except (FtctlError, OSError):  # a base that is not there (yet): say so on the row, don't crash
            template = None
        if template is None:
            return f"{where} is not on disk to check (run `ftctl train` once, or set {where.split()[-1]})"
    if renders_tool_calls(template):
        return ""
    return (f"{where} does not render tool calls (they would not be trained on); use a base whose template "
            f"does, or set train.{mc.train.trainer}.chat_template")


def _template_in(folder: Path) -> str | None:
    """A tokenizer folder's chat template: chat_template.jinja, or tokenizer_config.json's
    (the default one of a named list)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    t = cfg.get("chat_template")
    if isinstance(t, list):
        t = next((x.get("template") for x in t if x.get("name") == "default"), None)
    return t if isinstance(t, str) else None


def _result(ws: Workspace, name: str, card: dict, snapshot: Path) -> dict:
    return {
        "model": name, "read": card["read"], "kept": card["kept"], "filtered": card["filtered"],
        "rejected": card["rejected"], "scrubbed": card["scrubbed"], "splits": card["splits"],
        "preferences": card["preferences"], "unpaired": card["unpaired"],
        "rejects_file": ws.rel(snapshot / FILES["rejects"]) if snapshot.is_relative_to(ws.root) else None,
        "snapshot": None, "card": card,
    }


def _publish(ws: Workspace, name: str, out: Path, card: dict) -> None:
    """Swap the new snapshot in, record it (DVC + models.lock + commit); undo on failure."""
    final = ws.data_dir(name)
    old = final.with_name(f".{name}.previous")
    shutil.rmtree(old, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        final.rename(old)
    out.rename(final)

    def update(lock) -> None:
        st = lock.state(name)
        st.dataset = {
            "md5": dvc_md5(final), "created": card["created"],
            "rows": card["splits"], "filters": card["filters"], "window": card["window"],
            "card": {k: card[k] for k in ("read", "kept", "filtered", "rejected", "scrubbed", "preferences",
                                                 "unpaired")},
            "scrub": card["pii"],  # `ftctl diff` shows a change of scrub settings between versions
        }
        for src, info in card["sources"].items():
            if src != CARRIED and info.get("watermark"):
                st.watermarks[src] = info["watermark"]

    s = card["splits"]
    try:
        ws.record(f"collect {name}: {card['kept']} examples (train {s['train']}, val {s['val']}, "
                  f"test {s['test']}) from {card['read']} rows", update, track=[final])
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        if old.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)


