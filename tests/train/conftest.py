"""Workspaces wired to the tiny base with a small dataset snapshot, for training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures_models import chat

FACTS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Peru", "Lima"),
         ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Norway", "Oslo"), ("Cuba", "Havana"),
         ("Ghana", "Accra"), ("Nepal", "Kathmandu"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Mali", "Bamako")]


def examples(n: int = 30, long_every: int = 3) -> list[dict]:
    """Variable-length chats (some with long answers), like production data."""
    out = []
    for i in range(n):
        country, city = FACTS[i % len(FACTS)]
        answer = f"The capital of {country} is {city}."
        if i % long_every == 0:
            answer += f" {city} is also the largest city of {country}, with a long history." * (1 + i % 4)
        out.append(chat(f"What is the capital of {country}? ({i})", answer))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def configure(ws, base: Path | str, **lora) -> None:
    """Point the workspace at ``base`` with small, fast LoRA settings (plus ``lora`` overrides)."""
    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    cfg = y.load(ws.config_path.read_text())
    cfg["base"] = str(base)
    cfg["train"] = {"trainer": "lora", "lora": {"r": 4, "alpha": 8, "batch_size": 2, "max_length": 256,
                                                 "checkpoint_every": 2, "max_steps": 4, "learning_rate": 1e-3,
                                                 "warmup": 0, "precision": "fp32", **lora}}
    with open(ws.config_path, "w") as f:
        y.dump(cfg, f)
    ws.__dict__.pop("loaded", None)  # cached config


@pytest.fixture
def train_ws(workspace, tiny_base):
    """An initialised workspace training the tiny base on a 30-example snapshot (+ 6 val)."""
    configure(workspace, tiny_base)
    data = workspace.data_dir("assistant")
    write_jsonl(data / "train.jsonl", examples(30))
    write_jsonl(data / "val.jsonl", examples(6, long_every=2))
    return workspace
