"""The `kto` trainer: Kahneman-Tversky Optimization on TRL's KTOTrainer, as a LoRA adapter.

KTO needs no pairs: each answer is simply desirable (thumbs up, a good rating: the kept rows of
train.jsonl, with a user's correction as the answer) or undesirable (thumbs down, a low rating:
the rejected side of the snapshot's preference pairs, since curation keeps such answers only
there). Held-out pairs measure the margin before and after, as for `dpo`.
"""

from __future__ import annotations

from pydantic import Field

from ftctl.api import Trainer, TrainRequest, TrainResult, UsageError, read_jsonl
from ftctl_plugins.trainers import preference as pref


class KtoConfig(pref.PreferenceConfig):
    desirable_weight: float = Field(1.0, gt=0, description="loss weight of liked answers")
    undesirable_weight: float = Field(1.0, gt=0, description="loss weight of disliked answers")


def _split_turns(messages: list[dict], correction: str | None) -> tuple[list[dict], list[dict]] | None:
    """(prompt messages, [last assistant answer]) with a correction in place of the answer."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    answer = {"role": "assistant", "content": correction or messages[last]["content"]}
    return messages[:last], [answer]


class KtoTrainer(Trainer):
    name = "kto"
    Config = KtoConfig

    def train(self, request: TrainRequest) -> TrainResult:
        from trl import KTOConfig, KTOTrainer

        cfg = self.config
        path = pref.pairs_path(request.train_file)
        pairs = pref.read_pairs(path)
        rows = []
        for ex in read_jsonl(request.train_file):
            turns = _split_turns(ex.messages, ex.correction)
            if turns and turns[0]:
                rows.append({"prompt": turns[0], "completion": turns[1], "label": True})
        good = len(rows)
        rows += [{"prompt": p["prompt"], "completion": p["rejected"], "label": False}
                 for p in pairs if p.get("split", "train") == "train"]
        heldout = [p for p in pairs if p.get("split", "train") != "train"]
        if good == 0 or good == len(rows):
            raise UsageError("kto needs both liked and disliked answers "
                             f"(has {good} liked, {len(rows) - good} disliked)",
                             hint="collect thumbs-down or low-rated answers (curate.keep_negative) first")
        return pref.fit(self.name, (KTOConfig, KTOTrainer), rows, request, cfg, self.ctx, heldout, path,
                        {"answers": {"liked": good, "disliked": len(rows) - good}},
                        f"{good} liked, {len(rows) - good} disliked answers",
                        desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
