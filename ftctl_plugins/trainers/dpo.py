"""The `dpo` trainer: Direct Preference Optimization on TRL's DPOTrainer, as a LoRA adapter.

Trains on the snapshot's preference pairs (preferences.jsonl: a user's correction or a better
rated answer over the answer they disliked). ``ftctl train --trainer dpo --from v1.1``
continues v1.1's adapter with v1.1 itself as the reference policy; without --from a new
adapter moves away from the base. The version records the trainer, beta, the pairs file's
sha256 and counts, and the held-out margin before and after.
"""

from __future__ import annotations

import time
from pathlib import Path

from ftctl.api import Trainer, TrainRequest, TrainResult
from ftctl_plugins.trainers import preference as pref


class DpoConfig(pref.PreferenceConfig):
    pass


class DpoTrainer(Trainer):
    name = "dpo"
    Config = DpoConfig

    def train(self, request: TrainRequest) -> TrainResult:
        from datasets import Dataset
        from transformers import set_seed
        from trl import DPOConfig, DPOTrainer

        cfg, log = self.config, self.ctx.log
        path = pref.pairs_path(request.train_file)
        pairs = pref.read_pairs(path)  # a pair with a missing side fails here, before any model loads
        train = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs if p.get("split", "train") == "train"]
        heldout = [p for p in pairs if p.get("split", "train") != "train"]
        if not train:
            from ftctl.api import UsageError

            raise UsageError(f"{path.name} has no pairs in the train split", hint="collect more feedback first")
        set_seed(cfg.seed)
        model, tok = pref.load_policy(request.base, request.init_adapter, cfg)
        before = pref.margins(model, tok, heldout, cfg.max_length)
        log(f"dpo: {len(train)} pairs (beta {cfg.beta}); held-out margin before {before['margin']} "
            f"on {before['pairs']} pairs")
        out = Path(request.output_dir)
        trainer = pref.quiet(DPOTrainer(model=model, args=pref.training_args(DPOConfig, cfg, out), processing_class=tok,
                             train_dataset=Dataset.from_list(train)), log)
        started = time.monotonic()
        trainer.train()
        result = pref.finish(trainer, model, tok, out, heldout, before, cfg, time.monotonic() - started,
                             self._data(path, train, heldout), self.name)
        log(f"dpo: held-out margin {before['margin']} -> {result.metrics['margin_after']}")
        return result

    def _data(self, path: Path, train: list, heldout: list) -> dict:
        rel = path.relative_to(self.ctx.root) if path.is_relative_to(self.ctx.root) else path
        return {"preferences": str(rel), "preferences_sha256": pref.file_sha256(path),
                "pairs": {"train": len(train), "heldout": len(heldout)}}
