"""The `dpo` trainer: Direct Preference Optimization on TRL's DPOTrainer, as a LoRA adapter.

Trains on the snapshot's preference pairs (preferences.jsonl: a user's correction or a better
rated answer over the answer they disliked). ``ftctl train --trainer dpo --from v1.1``
continues v1.1's adapter with v1.1 itself as the reference policy; without --from a new
adapter moves away from the base. The version records the trainer, beta, the pairs file's
sha256 and counts, and the held-out margin before and after.
"""

from __future__ import annotations

from ftctl.api import Trainer, TrainRequest, TrainResult, UsageError
from ftctl_plugins.trainers import preference as pref


class DpoConfig(pref.PreferenceConfig):
    pass


class DpoTrainer(Trainer):
    name = "dpo"
    Config = DpoConfig

    def train(self, request: TrainRequest) -> TrainResult:
        from trl import DPOConfig, DPOTrainer

        cfg = self.config
        path = pref.pairs_path(request.train_file)
        pairs = pref.read_pairs(path)  # a pair with a missing side fails here, before any model loads
        train = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs if p.get("split", "train") == "train"]
        heldout = [p for p in pairs if p.get("split", "train") != "train"]
        if not train:
            raise UsageError(f"{path.name} has no pairs in the train split", hint="collect more feedback first")
        return pref.fit(self.name, (DPOConfig, DPOTrainer), train, request, cfg, self.ctx, heldout, {"preferences": path},
                        {"pairs": {"train": len(train), "heldout": len(heldout)}}, f"{len(train)} pairs")
