"""Benchmark: collecting from PostgreSQL, beside the transfer floor, in one run.

Loads N interaction rows (default 1,000,000) into a scratch table, then measures, each in its
own process (so peak RSS is that phase's own):

  copy      COPY (the source's query) TO STDOUT through psycopg: the transfer floor
  fetch     the same query through a server-side cursor, rows as tuples (the driver's share)
  read      the postgres source -> Examples, with the row filters (the read path)
  curate    the whole curation (collect --dry-run: filters, spill, dedup, conflicts, split, write);
            also as rows per CPU-second of collect itself, which moves less with the neighbours' load
  scrub     PII scrubbing alone, on a sample (Presidio is per-text work; reported as rows/s)

and prints rows/s, the phase's own CPU seconds and peak RSS for each, with its ratio to COPY.
Goals: read >= 0.5x COPY, curate >= 100,000 rows/s, peak RSS < 300 MB. (On a loaded machine the
wall-clock rates swing with the neighbours; the CPU seconds say what the phase itself costs.)

    .venv/bin/python benchmarks/collect_postgres.py [--rows N] [--dsn DSN] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "ftctl_bench"
DSN = os.environ.get("FTCTL_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
SOURCE = {"table": f"{SCHEMA}.interactions", "prompt": "prompt", "response": "response", "agent": "agent",
          "role": None, "content": None}


def load(dsn: str, rows: int) -> None:
    """The sample database's real answers, repeated with distinct prompts, bulk-inserted server-side."""
    import sqlite3

    import psycopg

    answers = [r[0] for r in sqlite3.connect(ROOT / "samples" / "feedback.sqlite").execute(
        "SELECT content FROM messages WHERE role = 'assistant' AND content IS NOT NULL")]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"CREATE TABLE {SCHEMA}.answers (n int PRIMARY KEY, text text)")
        with conn.cursor().copy(f"COPY {SCHEMA}.answers FROM STDIN") as cp:
            for i, a in enumerate(answers):
                cp.write_row((i, a))
        conn.execute(f"""CREATE TABLE {SCHEMA}.interactions AS
            SELECT g AS id, 'conv' || (g / 2) AS conversation_id,
                   'Question ' || g || ': what does this part of the library do?' AS prompt,
                   a.text AS response, 1 + (g * 7919) %% 5 AS rating,
                   CASE WHEN g %% 3 = 0 THEN 'numeric' ELSE 'pydocs' END AS agent,
                   timestamptz '2024-01-01' + g * interval '1 second' AS created_at
            FROM generate_series(1::bigint, %s) g JOIN {SCHEMA}.answers a ON a.n = g %% {len(answers)}""", (rows,))
        conn.execute(f"CREATE INDEX ON {SCHEMA}.interactions (conversation_id, created_at, id)")
        conn.execute(f"ANALYZE {SCHEMA}.interactions")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """This process's CPU and its ended children's (the scrubber's worker processes)."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def source_query(conn) -> str:
    """The exact SELECT the postgres source runs (no watermark, no filters to bind)."""
    import psycopg

    from ftctl_plugins.sources.postgres import PostgresSource
    from ftctl_plugins.sources.sql import build_query

    cfg = PostgresSource.Config(dsn="-", **SOURCE)
    query, _ = build_query(cfg, lambda s: psycopg.sql.Identifier(s).as_string(conn), lambda s: f"%({s})s", None)
    return query


def phase_copy(dsn: str) -> dict:
    import psycopg

    n = 0
    t = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        with conn.cursor().copy(f"COPY ({source_query(conn)}) TO STDOUT") as cp:
            for block in cp:
                n += bytes(block).count(b"\n")
    return {"rows": n, "seconds": time.perf_counter() - t}


def phase_fetch(dsn: str) -> dict:
    """The same query through a server-side cursor, rows left as tuples: the driver's share."""
    import psycopg

    n = 0
    t = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        with conn.cursor(name="bench") as cur:
            cur.execute(source_query(conn))
            while batch := cur.fetchmany(5000):
                n += len(batch)
    return {"rows": n, "seconds": time.perf_counter() - t}


def phase_read(dsn: str) -> dict:
    from datetime import datetime, timezone

    import psycopg  # noqa: F401  imported before the clock, as the copy phase does (the source imports it lazily)

    from ftctl import plugins

    from ftctl.data import curate
    from ftctl.config import CurateConfig
    from ftctl.kinds import Context

    filters = curate.Filters(CurateConfig(min_rating=4, max_tokens=2048), curate.token_counter(None)[0],
                             datetime.now(timezone.utc))
    src = plugins.build("source", "postgres", {"dsn": dsn, **SOURCE},
                        Context(root=ROOT, model="bench", cache_dir=ROOT), key="bench")
    n = kept = 0
    t = time.perf_counter()
    for ex in src.read(None):
        n += 1
        kept += filters.reason(ex)[0] is None
    return {"rows": n, "seconds": time.perf_counter() - t, "kept": kept}


def phase_curate(dsn: str) -> dict:
    from ftctl.data.collect import collect
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace

    with tempfile.TemporaryDirectory() as d:
        init(Path(d) / "ws", model="bench")
        ws = Workspace(Path(d) / "ws")
        from ruamel.yaml import YAML

        y = YAML(typ="safe")
        data = y.load(ws.config_path.read_text())
        data["sources"] = [{"name": "pg", "kind": "postgres", "dsn": dsn, **SOURCE}]
        data["curate"] = {"min_rating": 4, "scrub": {"enabled": False}}
        data["base"] = str(ROOT / "missing-base")  # the whitespace token count: no tokenizer to load
        with open(ws.config_path, "w") as f:
            y.dump(data, f)
        t, cpu = time.perf_counter(), cpu_seconds()
        r = collect(ws, dry_run=True, log=lambda s: None)
        return {"rows": r["read"], "seconds": time.perf_counter() - t, "kept": r["kept"],
                "timed_cpu": cpu_seconds() - cpu}  # collect's own CPU (the phase's CPU s has the imports too)


def phase_scrub(dsn: str, n: int = 2000) -> dict:
    """Batched (``Scrubber.scrub_many``: NER-only spaCy batches, split among one worker process per
    core), names on; the per-text ``scrub`` loop beside it (one process), same texts. Every text is
    new (each prompt has its own number): the cache of texts seen before does not help here."""
    from collections import Counter

    import psycopg

    from ftctl.lib.scrub import Scrubber

    with psycopg.connect(dsn) as conn:
        texts = [r[0] + "\n" + r[1] for r in conn.execute(
            f"SELECT prompt, response FROM {SCHEMA}.interactions ORDER BY id LIMIT %s", (n,))]
    cache = Path(tempfile.gettempdir()) / "ftctl-bench"
    Scrubber(cache_dir=cache).scrub("warm up a@b.com", Counter())  # loads spaCy (shared by both)
    t, cpu = time.perf_counter(), cpu_seconds()
    batch = Scrubber(cache_dir=cache)
    for _ in batch.scrub_many(texts, Counter()):
        pass
    batched = time.perf_counter() - t
    batch.close()  # the workers' CPU seconds count once they are ended
    cpu = cpu_seconds() - cpu
    one = Scrubber(cache_dir=cache)
    t = time.perf_counter()
    for x in texts[:n // 4]:  # a quarter: it is the slow one
        one.scrub(x, Counter())
    return {"rows": len(texts), "seconds": batched, "per_text_rows_s": (n // 4) / (time.perf_counter() - t),
            "processes": batch.processes, "batched_cpu": cpu}


PHASES = {"copy": phase_copy, "fetch": phase_fetch, "read": phase_read, "curate": phase_curate, "scrub": phase_scrub}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dsn", default=DSN)
    ap.add_argument("--keep", action="store_true", help="keep the scratch table")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # internal: one phase per process
    a = ap.parse_args()
    if a.phase:
        cpu = cpu_seconds()
        result = PHASES[a.phase](a.dsn)
        print(json.dumps({**result, "cpu": cpu_seconds() - cpu, "peak_rss_mb": peak_mb()}))
        return
    t = time.perf_counter()
    load(a.dsn, a.rows)
    print(f"loaded {a.rows:,} rows in {time.perf_counter() - t:.1f}s")
    results = {}
    try:
        for name in PHASES:
            out = subprocess.run([sys.executable, __file__, "--phase", name, "--dsn", a.dsn],
                                 capture_output=True, text=True, check=True, cwd=ROOT).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        if not a.keep:
            import psycopg

            with psycopg.connect(a.dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    floor = results["copy"]["rows"] / results["copy"]["seconds"]
    print(f"{'phase':<8}{'rows':>10}{'seconds':>10}{'rows/s':>12}{'x COPY':>9}{'CPU s':>8}{'peak RSS MB':>13}")
    for name, r in results.items():
        rate = r["rows"] / r["seconds"]
        print(f"{name:<8}{r['rows']:>10,}{r['seconds']:>10.1f}{rate:>12,.0f}{rate / floor:>9.3f}{r['cpu']:>8.1f}"
              f"{r['peak_rss_mb']:>13.0f}")
    read = results["read"]["rows"] / results["read"]["seconds"]
    curate = results["curate"]["rows"] / results["curate"]["seconds"]
    worst = max(r["peak_rss_mb"] for k, r in results.items() if k != "scrub")
    scrub = results["scrub"]["rows"] / results["scrub"]["seconds"]
    print(f"scrub: {scrub:,.0f} rows/s batched on {results['scrub']['processes']} processes, "
          f"{results['scrub']['rows'] / results['scrub']['batched_cpu']:,.0f} rows per CPU-second, "
          f"{results['scrub']['per_text_rows_s']:,.0f} rows/s one text at a time (names on; goal >= 1,500 rows/s: "
          f"{'met' if scrub >= 1500 else 'NOT met'}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs); "
          "precision and recall: benchmarks/phi_precision.py, benchmarks/phi_recall.py")
    print(f"goals: read path {read / floor:.2f}x COPY (>= 0.5: {'met' if read >= floor / 2 else 'NOT met'}); "
          f"curation {curate:,.0f} rows/s (>= 100,000: {'met' if curate >= 100_000 else 'NOT met'}; "
          f"{results['curate']['rows'] / results['curate']['timed_cpu']:,.0f} rows per CPU-second of collect); "
          f"peak RSS {worst:.0f} MB (< 300: {'met' if worst < 300 else 'NOT met'}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
