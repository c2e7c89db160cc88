"""Served-version attribution: every row carries the version that answered; the card counts them."""

from __future__ import annotations

import json

import pytest

from ftctl.data.collect import collect
from ftctl.registry.served import Resolver
from tests.loop.conftest import add_versions, configure

pytestmark = pytest.mark.integration


def test_resolver_maps_aliases_and_refuses_to_guess():
    r = Resolver("assistant", ["v1.0", "v1.1"])
    assert [r(x) for x in ("assistant@v1.0", "v1.1", " assistant@v1.1 ", "assistant@v9.9", "billing@v1.0",
                           "", None, "/srv/models/x.gguf")] == ["v1.0", "v1.1", "v1.1", None, None, None, None, None]


def test_the_baseline_is_a_version_for_attribution():
    from ftctl.registry.lockfile import ModelState
    from ftctl.registry.served import attribute

    state = ModelState.model_validate({"versions": {}, "baseline": {
        "app": "llama", "model_path": "/srv/m.gguf", "path": "/srv/m.gguf", "served_id": "prod-model",
        "recorded": "2026-12-05T00:00:00Z"}})
    r = Resolver.of("assistant", state)
    # what ftctl serves it as, and the id the team's server answered with before ftctl
    assert [r(x) for x in ("assistant@baseline", "prod-model", "assistant@base", "other", None)] == \
        ["baseline", "baseline", "base", None, None]
    seen = attribute("assistant", r.versions, ["assistant@baseline", "x@v1", None]).to_dict()
    assert seen["versions"] == {"baseline": 1} and seen["unattributed"] == 2  # never counted as a side
    assert Resolver.of("assistant", ModelState())("assistant@baseline") is None  # none recorded


def test_collect_counts_rows_per_served_version_and_keeps_unmatched(workspace, feedback, capsys):
    ws = workspace
    add_versions(ws, "assistant", ["v1.0", "v1.1"])
    feedback.add("assistant@v1.0", [5, 5, 4])
    feedback.add("assistant@v1.1", [5, 4])
    feedback.add("assistant@v9.9", [5])  # a version this registry never had
    feedback.add("billing@v1.0", [5])  # another model's alias
    feedback.add(None, [5])
    configure(ws, [feedback.source()])
    with ws.run_lock("collect"):
        r = collect(ws, "assistant")
    assert r["read"] == r["kept"] == 8  # nothing lost: unmatched rows are kept and counted
    card = json.loads(ws.snapshot_paths("assistant")["card"].read_text())
    assert card["served"] == {"versions": {"v1.0": 3, "v1.1": 2},
                              "unmatched": {"assistant@v9.9": 1, "billing@v1.0": 1}, "none": 1,
                              "unattributed": 3}
    assert "matches no version" in capsys.readouterr().out
    rows = [json.loads(x) for s in ("train", "val", "test")
            for x in ws.snapshot_paths("assistant")[s].read_text().splitlines()]
    assert sorted(str(x["served_model"]) for x in rows) == sorted(
        ["assistant@v1.0"] * 3 + ["assistant@v1.1"] * 2 + ["assistant@v9.9", "billing@v1.0", "None"])
