"""Experiment trackers for training runs: TensorBoard, MLflow, Weights & Biases (``train.report_to``).

The per-step logging is transformers' own (its TensorBoard, MLflow and W&B callbacks, which the
lora, dpo and kto trainers all run through ``report_to``); this module does what those callbacks
cannot know: where the logs go, and what a version adds later.

- TensorBoard writes into the run, and the event files are stored with the adapter
  (``adapters/<model>/<version>/tensorboard/``, DVC-tracked): the curves are versioned with it.
- MLflow: the run is created here (experiment ``train.mlflow_experiment``, default ``ftctl-<model>``)
  and handed to transformers' callback through ``MLFLOW_RUN_ID``, so ftctl knows its id: after
  training it logs ftctl's settings, the final metrics and the adapter as an artifact; ``ftctl eval
  --compare`` later adds the comparison (each metric's diff, p-value and verdict) to the same run.
- W&B runs in ``train.wandb_mode`` (``offline`` by default: nothing leaves the machine; ``wandb
  sync`` uploads the recorded folder later).

A tracker that cannot be reached never stops training: it is checked before the run starts
(no retries), dropped for this run, and the result's ``tracking`` says what failed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from ftctl.lib.redact import redact

TRACKERS = ("tensorboard", "mlflow", "wandb")


class Tracking:
    """One training run's trackers. ``env`` is what the trainer's process needs set."""

    def __init__(self, report_to: list[str], *, model: str, version: str, run_dir: Path, mlflow_uri: str | None,
                 mlflow_experiment: str | None, wandb_project: str | None, wandb_mode: str, log=print):
        self.wanted = [t for t in report_to if t in TRACKERS]
        self.model, self.version, self.run_dir, self.log = model, version, Path(run_dir), log
        self.mlflow_uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.mlflow_experiment = mlflow_experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"ftctl-{model}"
        self.wandb_project, self.wandb_mode = wandb_project or f"ftctl-{model}", wandb_mode
        self.status: dict[str, Any] = {}
        self.report_to: list[str] = []
        self.env: dict[str, str] = {}

    @property
    def run_name(self) -> str:
        return f"{self.model}@{self.version}"

    def start(self) -> None:
        """Check and set up each tracker; one that cannot run is reported, not fatal."""
        for name in self.wanted:
            try:
                getattr(self, f"_start_{name}")()
                self.report_to.append(name)
            except Exception as e:  # an unreachable server, a missing package: said, and training goes on
                self.status[name] = {"ok": False, "error": redact(f"{type(e).__name__}: {e}")[:300]}
                self.log(f"warning: {name} tracking is off for this run: {self.status[name]['error']}")

    def _start_tensorboard(self) -> None:
        import tensorboard  # noqa: F401  (transformers' callback needs it; say so before training)

        self.env["TENSORBOARD_LOGGING_DIR"] = str(self.run_dir / "tensorboard")
        self.status["tensorboard"] = {"ok": True}

    def _start_mlflow(self) -> None:
        client = _mlflow_client(self.mlflow_uri)
        exp = client.get_experiment_by_name(self.mlflow_experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.mlflow_experiment)
        run = client.create_run(exp_id, run_name=self.run_name,
                                tags={"ftctl.model": self.model, "ftctl.version": self.version})
        self.env.update({"MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_EXPERIMENT_NAME": self.mlflow_experiment,
                         "HF_MLFLOW_LOG_ARTIFACTS": "0"})  # the adapter is logged once, by finish
        if self.mlflow_uri:
            self.env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        self.status["mlflow"] = {"ok": True, "uri": redact(self.mlflow_uri or client.tracking_uri),
                                 "experiment_id": exp_id, "run_id": run.info.run_id}

    def _start_wandb(self) -> None:
        import wandb  # noqa: F401

        folder = self.run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        self.env.update({"WANDB_PROJECT": self.wandb_project, "WANDB_MODE": self.wandb_mode,
                         "WANDB_DIR": str(self.run_dir), "WANDB_NAME": self.run_name, "WANDB_SILENT": "true",
                         "WANDB_LOG_MODEL": "false"})
        self.status["wandb"] = {"ok": True, "mode": self.wandb_mode, "project": self.wandb_project}

    @contextlib.contextmanager
    def environment(self):
        """The trackers' variables for the trainer (and a torchrun it starts), restored after. Their
        chatter on stdout (transformers prints "Running in WANDB offline mode", MLflow a run's URL)
        goes to stderr: stdout is the CLI's, one JSON document with --json."""
        chatty = bool({"mlflow", "wandb"} & set(self.report_to))  # TensorBoard prints nothing
        if chatty:
            self.env.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        with _environ(self.env, quiet=chatty):
            yield

    def finish(self, *, params: dict[str, Any], metrics: dict[str, Any], adapter_dir: Path,
               stored_dir: Path, rel) -> dict[str, Any]:
        """After training: the TensorBoard files into the stored adapter, the MLflow run completed with
        ftctl's settings, final metrics and the adapter. Returns what models.lock records."""
        import shutil

        tb = self.run_dir / "tensorboard"
        if self.status.get("tensorboard", {}).get("ok") and tb.is_dir():
            shutil.copytree(tb, stored_dir / "tensorboard", dirs_exist_ok=True)
            self.status["tensorboard"]["logs"] = rel(stored_dir / "tensorboard")
        ml = self.status.get("mlflow")
        if ml and ml.get("ok"):
            try:
                from mlflow.entities import Metric, Param

                client = _mlflow_client(self.mlflow_uri)
                run_id = ml["run_id"]
                flat = {f"ftctl.{k}": str(v)[:500] for k, v in params.items() if v is not None}
                client.log_batch(run_id, params=[Param(k, v) for k, v in flat.items()])
                finals = [Metric(f"final/{k}", float(v), 0, 0) for k, v in metrics.items()
                          if isinstance(v, int | float)]
                if finals:
                    client.log_batch(run_id, metrics=finals)
                client.log_artifacts(run_id, str(adapter_dir), "adapter")
                client.set_terminated(run_id)
                ml["adapter_artifact"] = "adapter"
            except Exception as e:
                ml.update({"ok": False, "error": redact(f"after training: {type(e).__name__}: {e}")[:300]})
                self.log(f"warning: mlflow tracking failed after training: {ml['error']}")
        wb = self.status.get("wandb")
        if wb and wb.get("ok"):
            runs = sorted((self.run_dir / "wandb").glob("offline-run-*" if self.wandb_mode == "offline" else "run-*"))
            if runs:
                wb["run_dir"] = rel(runs[-1])
        return self.status


def log_comparison(tracking: dict[str, Any], result: dict[str, Any], uri: str | None) -> dict[str, Any] | None:
    """``ftctl eval --compare A B``: B's metrics against A (diff, p-value, verdict) on B's MLflow run
    (``uri``: train.mlflow_uri as configured now; models.lock keeps it redacted). Returns what
    happened (None when B was not tracked in MLflow)."""
    ml = (tracking or {}).get("mlflow") or {}
    if not ml.get("run_id"):
        return None
    try:
        import time

        from mlflow.entities import Metric

        client = _mlflow_client(uri or os.environ.get("MLFLOW_TRACKING_URI"))
        stamp, against, set_name = int(time.time() * 1000), result["a"], result.get("eval_set", "test")
        metrics, tags = [], {}
        for name, m in result["metrics"].items():
            prefix = f"compare/{set_name}/{name}"
            for key in ("a", "b", "diff", "p_value"):
                if isinstance(m.get(key), int | float):
                    metrics.append(Metric(f"{prefix}/{key}", float(m[key]), stamp, 0))
            tags[f"compare.{set_name}.{name}.verdict"] = f"{m.get('verdict')} (vs {against})"
        client.log_batch(ml["run_id"], metrics=metrics)
        for k, v in tags.items():
            client.set_tag(ml["run_id"], k, v)
        return {"ok": True, "run_id": ml["run_id"], "metrics": len(metrics)}
    except Exception as e:
        return {"ok": False, "error": redact(f"{type(e).__name__}: {e}")[:300]}


@contextlib.contextmanager
def _environ(values: dict[str, str], quiet: bool = True):
    """``values`` in the environment (and, ``quiet``, prints to stderr) for the block; restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        with contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext():
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fail_fast():
    """ftctl's own MLflow calls: an unreachable server is one error now, not minutes of retries
    (transformers' callback, during training, keeps MLflow's retries)."""
    return _environ({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                     "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})


class _Client:
    """MlflowClient whose every call fails fast."""

    def __init__(self, uri: str | None):
        from mlflow.tracking import MlflowClient

        self._c = MlflowClient(tracking_uri=uri) if uri else MlflowClient()
        self.tracking_uri = self._c.tracking_uri

    def __getattr__(self, name):
        method = getattr(self._c, name)

        def call(*a, **kw):
            with _fail_fast():
                return method(*a, **kw)
        return call


def _mlflow_client(uri: str | None):
    client = _Client(uri)
    client.search_experiments(max_results=1)  # reachable, and a tracking server (not any web page)
    return client
