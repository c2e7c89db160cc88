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


def settings_of(cfg: ModelConfig):
    from ftctl.lib.generation import GenSettings

    return GenSettings(max_new_tokens=cfg.eval.max_new_tokens, stop=tuple(cfg.eval.stop), seed=cfg.eval.seed)


def open_backend(ws, target: Target, log: Log = print):
    """The generation backend for a target (loads the model; heavy)."""
    from ftctl.lib import generation

    cfg = ws.model(target.model)
    settings = settings_of(cfg)
    if target.gguf is not None:
        return generation.GGUFBackend(target.gguf, settings, n_ctx=cfg.eval.n_ctx)
    resolved = ws.resolve_base(target.model, target.base_ref, log=log)
    model, tok = generation.load_hf(resolved, target.adapter_dir)
    return generation.HFBackend(model, tok, settings, batch_size=cfg.eval.batch_size)


class Predictor:
    """Loads a backend only when a prediction is not cached yet."""

    def __init__(self, ws, target: Target, log: Log = print):
        self.ws, self.target, self.log = ws, target, log
        self._backend = None

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
        if cache.is_file():
            return json.loads(cache.read_text())
        self.log(f"generating {len(evalset.examples)} answers with {self.target.label}")
        preds = self.backend.generate([prompt_messages(ex) for ex in evalset.examples])
        write_text(cache, json.dumps(preds))
        return preds


def chat_backend(ws, ref: str, *, model: str | None = None, artifact: str | None = None) -> tuple[Target, Any]:
    """(target, loaded backend) for `ftctl chat`."""
    target = resolve_target(ws, ref, model=model, artifact=artifact)
    return target, open_backend(ws, target)
