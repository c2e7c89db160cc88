"""Guard tasks beside the eval set: general questions (capitals, currencies, a plugin's own) that
a fine-tuned version must still answer as well as what it is compared with (eval.guards_tasks)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ftctl import plugins
from ftctl.eval.evalset import EvalSet
from ftctl.eval.predict import Predictor
from ftctl.kinds import GuardItem, GuardTask
from ftctl.lib.log import Log
from ftctl.records import Example


def load_guards(ws, model: str, log: Log = print) -> dict[str, tuple[GuardTask, list[GuardItem], EvalSet]]:
    """Each configured guard task, its items and the eval set they make (built before any
    generation, so an unknown task is a config error that costs nothing)."""
    cfg = ws.model(model).eval
    ctx = ws.context(model, log=log)
    out = {}
    for name in cfg.guards_tasks:
        task = plugins.build("guard", name, {}, ctx, key=f"eval.guards_tasks.{name}")
        items = task.items(cfg.guards_limit)
        examples = [Example(messages=[{"role": r, "content": c} for r, c in it.messages]) for it in items]
        digest = hashlib.sha256(json.dumps([[it.messages, it.accept] for it in items]).encode()).hexdigest()
        out[name] = (task, items, EvalSet(f"guard:{name}", Path(f"guard:{name}"), digest, examples))
    return out


def guard_scores(predictor: Predictor, guards: dict) -> dict[str, list[float]]:
    """Per task, 1/0 per item for this side's answers (generated with the eval settings, cached)."""
    latency = predictor.latency  # the eval set's, not the guards'
    out = {}
    for name, (task, items, evalset) in guards.items():
        answers = predictor.predict(evalset)
        out[name] = [task.score(a, it) for a, it in zip(answers, items)]
    predictor.latency = latency
    return out

