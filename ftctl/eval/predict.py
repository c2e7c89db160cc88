"""Generation, cached on disk by content (greedy decoding makes the answers a pure function)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ftctl.config import ModelConfig
from ftctl.eval.evalset import EvalSet
from ftctl.eval.target import Target, resolve_target
from ftctl.lib.atomic import write_text
from ftctl.lib.log import Log
from ftctl.lib.times import now


def settings_of(cfg: ModelConfig):
    from ftctl.lib.generation import GenSettings

    return GenSettings(max_new_tokens=cfg.eval.max_new_tokens, stop=tuple(cfg.eval.stop), seed=cfg.eval.seed)


def open_backend(ws, target: Target, log: Log = print, parallel: int | None = None, n_gpu_layers: int | None = None):
    """The generation backend for a target (loads the model; heavy). ``n_gpu_layers`` overrides
    eval.n_gpu_layers (`ftctl chat --n-gpu-layers`)."""
    from ftctl.lib import generation

    cfg = ws.model(target.model)
    settings = settings_of(cfg)
    if target.gguf is not None:
        gpu = cfg.eval.n_gpu_layers if n_gpu_layers is None else n_gpu_layers
        asked = parallel or cfg.eval.parallel
        backend = generation.GGUFBackend(target.gguf, settings, n_ctx=cfg.eval.n_ctx, parallel=asked,
                                         n_gpu_layers=gpu, reproducible=cfg.eval.reproducible)
        if backend.varying and asked > 1:
            log(f"{target.gguf.name}: llama.cpp's batched {', '.join(backend.varying)} kernels round differently "
                f"from one answer at a time, so its answers are decoded one at a time, the same every run "
                f"(eval.reproducible: false decodes {asked} at once, faster, the answers varying with the batch)")
        return backend
    from ftctl.lib.device import probe, resolve

    device = resolve(cfg.eval.device, probe())  # a device that does not exist fails before loading
    resolved = ws.resolve_base(target.model, target.base_ref, log=log)
    model, tok = generation.load_hf(resolved, target.adapter_dir, device=device,
                                    quantization=target.base_quantization)
    return generation.HFBackend(model, tok, settings, batch_size=cfg.eval.batch_size)


class Predictor:
    """Loads a backend only when a prediction is not cached yet. ``latency`` summarises the
    generation times, measured when the answers were generated (and cached with them)."""

    def __init__(self, ws, target: Target, log: Log = print):
        self.ws, self.target, self.log = ws, target, log
        self._backend = None
        self.latency: dict[str, Any] | None = None
        self.failures: list[tuple[int, str]] = []  # the last predict's answers that failed: (index, why)

    @property
    def backend(self):
        if self._backend is None:
            self.log(f"loading {self.target.model}@{self.target.label}")
            self._backend = open_backend(self.ws, self.target, self.log)
        return self._backend

    def predict(self, evalset: EvalSet) -> list[str]:
        from ftctl.lib.generation import prompt_messages

        cfg = self.ws.model(self.target.model)
        key = hashlib.sha256(json.dumps([self.target.artifact, self.target.base_ref, self.target.identity,
                                         evalset.sha256, len(evalset.examples), settings_of(cfg).__dict__],
                                        sort_keys=True, default=list).encode()).hexdigest()[:32]
        cache = self.ws.cache_dir / "eval" / f"{key}.json"
        self.failures = []
        if cache.is_file():
            data = json.loads(cache.read_text())
            if isinstance(data, list):  # written before latency was recorded
                return data
            self.latency = data.get("latency")
            return data["predictions"]
        self.log(f"generating {len(evalset.examples)} answers with {self.target.label}")
        preds = self.backend.generate([prompt_messages(ex) for ex in evalset.examples])
        self.latency = latency_summary(getattr(self.backend, "timings", None), self.target.artifact)
        self.failures = list(getattr(self.backend, "failures", None) or [])
        if self.failures:  # those examples are not scored; not cached, so the next run retries them
            i, why = self.failures[0]
            self.log(f"[yellow]{len(self.failures)} of {len(preds)} answers failed[/] (example {i + 1}: {why})")
            return preds
        write_text(cache, json.dumps({"predictions": preds, "latency": self.latency}))
        return preds


def latency_summary(timings: list[tuple[float, int]] | None, artifact: str) -> dict[str, Any] | None:
    """Median and 95th percentile seconds per answer, and generated tokens per second."""
    if not timings:
        return None
    from statistics import median, quantiles

    secs = [t for t, _ in timings]
    tokens = sum(n for _, n in timings)
    p95 = quantiles(secs, n=20, method="inclusive")[-1] if len(secs) > 1 else secs[0]
    return {"backend": artifact.split(":")[0], "n": len(secs), "median_s": round(median(secs), 4),
            "p95_s": round(p95, 4), "tokens_per_s": round(tokens / sum(secs), 2) if sum(secs) else None,
            "seconds": [round(t, 4) for t in secs], "measured": now()}


def chat_backend(ws, ref: str, *, model: str | None = None, artifact: str | None = None,
                 n_gpu_layers: int | None = None) -> tuple[Target, Any]:
    """(target, loaded backend) for `ftctl chat`."""
    target = resolve_target(ws, ref, model=model, artifact=artifact)
    return target, open_backend(ws, target, parallel=1, n_gpu_layers=n_gpu_layers)  # one prompt: one slot


def brief_latency(summary: dict | None) -> dict | None:
    """A latency summary without its per-example seconds (for models.lock and the console)."""
    return None if summary is None else {k: v for k, v in summary.items() if k != "seconds"}
