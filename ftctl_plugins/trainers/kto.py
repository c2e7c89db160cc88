"""The `kto` trainer: Kahneman-Tversky Optimization on TRL's KTOTrainer, as a LoRA adapter.

KTO needs no pairs: each answer is simply desirable or undesirable. Liked: the kept rows of
train.jsonl (thumbs up, a good rating, or unrated; a user's correction as the answer). Disliked:
the train split of ``unpaired.jsonl``, where collect writes every thumbs-down or low-rated answer
(with or without a kept answer to the same prompt) and every corrected original, each once.
The pairs' rejected sides are those same answers, so they are not read again: held-out pairs of
preferences.jsonl (when there are any) only measure the margin before and after, as for `dpo`.
A kept answer's reward (from the source, or the `reward` hook: regenerated -0.5, edited -0.3)
is a signal too: a negative one makes the answer undesirable (``reward_sign``), and answers whose
reward is too small either way can be left out (``min_reward_size``).
The version records both files' sha256 and the liked/disliked counts.
"""

from __future__ import annotations

from pydantic import Field

from ftctl.api import Trainer, TrainRequest, TrainResult, UsageError, read_jsonl
from ftctl_plugins.trainers import preference as pref


class KtoConfig(pref.PreferenceConfig):
    desirable_weight: float = Field(1.0, gt=0, description="loss weight of liked answers")
    undesirable_weight: float = Field(1.0, gt=0, description="loss weight of disliked answers")
    reward_sign: bool = Field(True, description="a kept answer with a negative reward (regenerated, edited: the "
                                                "reward hook's table) is undesirable, not liked")
    min_reward_size: float = Field(0.0, ge=0, le=1, description="leave out kept answers whose |reward| is below "
                                                               "this: too weak a signal either way (0: keep all)")


def label_rows(examples, unpaired: list[dict], cfg: KtoConfig) -> tuple[list[dict], dict[str, int]]:
    """KTO rows: kept answers liked, disliked ones from ``unpaired``; with a reward, its sign
    decides (``reward_sign``) and its size may leave a row out (``min_reward_size``). Returns
    (rows, counts of what the rewards changed)."""
    rows, counts = [], {"by_reward_disliked": 0, "too_weak": 0}
    for ex in examples:
        turns = _split_turns(ex.messages, ex.correction)
        if not (turns and turns[0]):
            continue
        label = True
        if ex.reward is not None and not ex.correction:  # a correction is the user's own answer: liked
            if abs(ex.reward) < cfg.min_reward_size:
                counts["too_weak"] += 1
                continue
            if cfg.reward_sign and ex.reward < 0:
                label = False
                counts["by_reward_disliked"] += 1
        rows.append({"prompt": turns[0], "completion": turns[1], "label": label})
    rows += [{k: u[k] for k in ("prompt", "completion", "label")} for u in unpaired if u.get("split", "train") == "train"]
    return rows, counts


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
        unpaired_path = pref.unpaired_path(request.train_file)
        unpaired = pref.read_unpaired(unpaired_path)  # a bad line fails here, before any model loads
        pairs_path = pref.pairs_path(request.train_file)
        heldout = [p for p in pref.read_pairs(pairs_path, required=False) if p.get("split", "train") != "train"]
        rows, by_reward = label_rows(read_jsonl(request.train_file), unpaired, cfg)
        liked = sum(r["label"] for r in rows)
        disliked = len(rows) - liked
        if not liked or not disliked:
            raise UsageError(f"kto needs both liked and disliked answers (has {liked} liked, {disliked} disliked "
                             f"in the train split)",
                             hint="collect thumbs-down or low-rated answers (curate.keep_negative) and kept ones first")
        files = {"unpaired": unpaired_path, **({"preferences": pairs_path} if pairs_path.is_file() else {})}
        return pref.fit(self.name, (KTOConfig, KTOTrainer), rows, request, cfg, self.ctx, heldout, files,
                        {"answers": {"liked": liked, "disliked": disliked, **by_reward}},
                        f"{liked} liked, {disliked} disliked answers",
                        desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
