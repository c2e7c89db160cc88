"""The `reward` hook: feedback types become -1..+1 rewards at collect (the built-in table answers
last); a plugin's own answer wins; a plugin that raises or answers out of range stops the
collect with its name, and nothing is recorded."""

from __future__ import annotations

import json

import pytest

from ftctl import plugins
from ftctl.api import hookimpl
from ftctl.data.collect import collect
from ftctl.errors import FtctlError
from tests.collect.conftest import configure, event, write_jsonl

TYPES = ["thumbs_up", "copy", "edit", "regenerate", "thumbs_down", None]


@pytest.fixture
def rated(workspace):
    rows = [event(f"Question {i} about feedback type {t}?", f"Answer {i}.", i=i,
                  **({"feedback_type": t} if t else {"rating": 5})) for i, t in enumerate(TYPES * 3)]
    rows.append(event("Keep my own reward", "Sure.", i=99, feedback_type="copy", reward=0.9))
    write_jsonl(workspace.root / "feedback" / "events.jsonl", rows)
    configure(workspace, [{"name": "events", "kind": "jsonl", "path": "feedback/events.jsonl"}],
              {"split": {"val": 0.0, "test": 0.0}})
    return workspace


class Plugin:
    """A team's own reward plugin, registered on the live plugin manager for one test."""

    def __init__(self, name, func):
        self.name, self.func = name, func

    def __enter__(self):
        pm = plugins.manager()
        pm.register(self, name=self.name)
        return self

    def __exit__(self, *exc):
        plugins.manager().unregister(self)

    @hookimpl
    def reward(self, example):
        return self.func(example)


def rewards(ws):
    rows = [json.loads(x) for x in (ws.data_dir("assistant") / "train.jsonl").read_text().splitlines()]
    rows += [json.loads(x) for x in (ws.data_dir("assistant") / "unpaired.jsonl").read_text().splitlines()]
    return rows


def test_the_built_in_table_rewards_feedback_types(rated):
    r = collect(rated, log=lambda *_: None)
    assert r["card"]["rewarded"] == {"sources (ftctl)": 15}  # 5 types x 3; the row with its own reward kept it
    train = [json.loads(x) for x in (rated.data_dir("assistant") / "train.jsonl").read_text().splitlines()]
    by_type = {(e["feedback_type"], e["reward"]) for e in train}
    assert {("thumbs_up", 1.0), ("copy", 0.5), ("edit", -0.3), ("regenerate", -0.5), (None, None),
            ("copy", 0.9)} <= by_type
    assert not any(e["feedback_type"] == "thumbs_down" for e in train)  # still never trained on


def test_a_plugin_answers_first_and_may_leave_types_to_the_table(rated):
    with Plugin("dwell", lambda ex: 0.8 if ex.feedback_type == "copy" else None):
        r = collect(rated, log=lambda *_: None)
    assert r["card"]["rewarded"] == {"dwell": 3, "sources (ftctl)": 12}
    train = [json.loads(x) for x in (rated.data_dir("assistant") / "train.jsonl").read_text().splitlines()]
    assert {e["reward"] for e in train if e["feedback_type"] == "copy"} == {0.8, 0.9}


@pytest.mark.parametrize("func, says", [
    (lambda ex: 1 / 0, "the reward hook of plugin exploding failed on events"),
    (lambda ex: 3.0, "the reward hook of plugin exploding returned 3.0"),
])
def test_a_broken_reward_hook_names_the_plugin_and_records_nothing(rated, func, says):
    before = rated.read_lock().models.get("assistant")
    with Plugin("exploding", func), pytest.raises(FtctlError) as e:
        collect(rated, log=lambda *_: None)
    assert says in e.value.message and "nothing was recorded" in e.value.hint
    assert rated.read_lock().models.get("assistant") == before
    assert not (rated.data_dir("assistant") / "train.jsonl").exists()
