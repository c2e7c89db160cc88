"""Loop fixtures: a PostgreSQL feedback table the test writes to, versions in models.lock."""

from __future__ import annotations

import http.client
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from tests.collect.conftest import configure, pg_dsn  # noqa: F401 - pg_dsn is a fixture
from tests.deploy.conftest import (_workspace_template, deploy_workspace, lora_files, lora_ws,  # noqa: F401 - fixtures
                                   nginx_factory, pm2_home, stack)


def add_versions(ws, model: str, versions) -> None:
    """Bare version entries (no files): enough to attribute served_model values."""
    from ftctl.registry.lockfile import VersionEntry
    from ftctl.lib.times import now

    def update(lock):
        for v in versions:
            lock.state(model).versions.setdefault(v, VersionEntry(version=v, created=now()))

    with ws.run_lock("test setup"):
        ws.record(f"test: versions of {model}", update)


class Feedback:
    """One interactions table (prompt, response, rating, served_model, ...) in a scratch schema."""

    def __init__(self, dsn: str, schema: str):
        self.dsn, self.schema, self.n = dsn, schema, 0

    @property
    def table(self) -> str:
        return f'"{self.schema}".feedback'

    def source(self, name: str = "chat") -> dict:
        return {"name": name, "kind": "postgres", "dsn": self.dsn, "table": f"{self.schema}.feedback",
                "prompt": "prompt", "response": "response", "rating": "rating", "agent": "agent",
                "served_model": "served_model", "conversation_id": "conversation_id"}

    def add(self, served: str | None, ratings, *, agent: str = "support", prompt: str = "Question {i} about my order?",
            answer: str | None = "Answer {i}: it ships tomorrow.", at: datetime | None = None) -> None:
        """One row per rating, answered by ``served``, created at ``at`` (default: now)."""
        import psycopg

        at = at or datetime.now(timezone.utc)
        rows = []
        for r in ratings:
            self.n += 1
            rows.append((prompt.format(i=self.n), answer and answer.format(i=self.n), r, served, agent,
                         f"c{self.n}", at + timedelta(microseconds=self.n)))
        with psycopg.connect(self.dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {self.table} (prompt, response, rating, served_model, agent, "
                            f"conversation_id, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s)", rows)

    def record(self, served: str, prompt: str, response: str, rating: int, user: str) -> None:
        """One real answer and its user's rating, as a chat app stores it (the served id from the answer)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {self.table} (prompt, response, rating, served_model, agent, conversation_id, "
                         f"created_at) VALUES (%s,%s,%s,%s,%s,%s,now())", (prompt, response, rating, served, "support", user))


@pytest.fixture
def feedback(pg_dsn):  # noqa: F811 - the imported fixture
    import psycopg

    schema = f"ftctl_loop_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'''CREATE TABLE "{schema}".feedback (id bigserial PRIMARY KEY, prompt text, response text,
                         rating int, served_model text, agent text, conversation_id text, created_at timestamptz)''')
    yield Feedback(pg_dsn, schema)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


__all__ = ["Feedback", "add_versions", "configure"]


def chat(url, prompt: str, user: str, max_tokens: int = 4) -> tuple[dict | None, object]:
    """One user's chat request through ``url`` (a urlsplit result) on a new connection, as a web
    app's clients send it: (the parsed answer, None), or (None, what failed)."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "user": user})
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        conn.request("POST", url.path, body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
    except (OSError, http.client.HTTPException) as e:
        return None, repr(e)
    finally:
        conn.close()
    return (json.loads(raw), None) if r.status == 200 else (None, (r.status, raw[:200]))


def tiny_loop_config(data: dict, base, feedback, *, min_rated: int, **cycle) -> dict:
    """``data`` (a workspace's ftctl.yaml) set for the loop on a tiny random model: its answers are
    noise no offline gate can judge, so the users' ratings on the canary decide."""
    data.update(
        base=str(base), sources=[feedback.source()],
        curate={"scrub": {"enabled": False}, "min_rating": 3, "split": {"val": 0.1, "test": 0.2}},
        train={"trainer": "lora", "lora": {"r": 4, "alpha": 8, "batch_size": 4, "max_length": 128,
                                           "precision": "fp32", "learning_rate": 1e-3}},
        eval={"metrics": ["token_f1"], "max_new_tokens": 4, "bootstrap": 200, "limit": 8},
        cycle={"min_new_examples": 10, "export": True, "deploy": True, "canary_percent": 50, "gate": False,
               **cycle})
    data["deploy"]["canary"] = {"steps": [50, 100], "min_rated": min_rated, "min_requests": 10,
                                "max_latency_ratio": 3.0}
    return data
