"""Collect fixtures: workspaces configured with given sources, feedback files, PostgreSQL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import need

PG_DSN = os.environ.get("FTCTL_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def configure(ws, sources: list[dict], curate: dict | None = None) -> None:
    """Rewrite the workspace's ftctl.yaml with these sources and curate settings."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    data = yaml.load(ws.config_path.read_text())
    data["sources"] = sources
    data["curate"] = {"scrub": {"enabled": False}, **(curate or {})}
    with open(ws.config_path, "w") as f:
        yaml.dump(data, f)
    ws.__dict__.pop("loaded", None)  # the config is cached per Workspace


def event(prompt, response, i=0, **kw) -> dict:
    return {"prompt": prompt, "response": response, "conversation_id": f"conv{i}",
            "created_at": f"2024-03-{1 + i % 28:02d}T10:00:00Z", **kw}


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for r in rows:
            f.write(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode())
    return path


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The local PostgreSQL server; required under CI=true."""
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=3):
            pass
    except Exception as e:  # noqa: BLE001 - any failure means "not available"
        need(False, f"PostgreSQL at {PG_DSN} ({e})")
    return PG_DSN
