"""`ftctl deploy` and `ftctl train` as the CLI runs them: each joins two stages (a flow).

The stages import no other stage, so where a verb needs another stage's step, the step is
handed in from here:

- deploy: the eval gate (ftctl.eval.gating) when ``deploy.gate`` (or ``--gate``) asks for it,
  run by the rollout (ftctl.deploy.rollout) in its own order: after the deployer's preflight and
  the recovery of an interrupted command, before anything changes;
- train: a fresh collect (ftctl.data.collect) when ``curate.collect_before_train`` asks for it,
  run by the train verb (ftctl.train) before it reads the snapshot of a new run.
"""

from __future__ import annotations

from typing import Any

from ftctl import train as training
from ftctl.data.collect import collect
from ftctl.deploy import rollout
from ftctl.eval import gating
from ftctl.lib.log import Log
from ftctl.registry.workspace import Workspace, locked


@locked
def deploy(ws: Workspace, ref: str, *, canary: int | None = None, dry_run: bool = False, gate: bool | None = None,
           allow_forgotten: bool = False, log: Log = print) -> dict[str, Any]:
    """:func:`ftctl.deploy.rollout.deploy`, behind the eval gate when ``gate`` (None: deploy.gate)."""

    def eval_gate(model: str, label: str) -> None:
        if label.endswith(("@base", "@baseline")):  # going back to what ran before: nothing to beat
            return
        if gate if gate is not None else ws.model(model).deploy.gate:
            log(f"eval gate: {label} against {ws.model(model).eval.gate.against}")
            gating.gate(ws, label, model=model, log=log)

    return rollout.deploy(ws, ref, canary=canary, dry_run=dry_run, check=eval_gate, allow_forgotten=allow_forgotten,
                          log=log)


@locked
def train(ws: Workspace, model: str | None = None, *, log: Log = print, **options: Any) -> dict[str, Any]:
    """:func:`ftctl.train.train` (same options), after a collect when curate.collect_before_train."""

    def collect_first(ws: Workspace, name: str) -> None:
        if ws.model(name).curate.collect_before_train:
            collect(ws, name, log=log)  # train on the freshest data

    return training.train(ws, model, refresh=collect_first, log=log, **options)
