"""What the preference trainers (dpo, kto) share: the pairs file, the adapter setup, the margin.

The pairs are the ``preferences.jsonl`` that ``collect`` writes beside ``train.jsonl`` (TRL's
conversational format: ``prompt`` messages, one-message ``chosen`` and ``rejected`` lists, plus
``split``). Pairs of the train split are trained on; the others are held out, and the mean
held-out margin, log p(chosen) - log p(rejected) summed over the answer tokens, is measured
before and after training. ``kto`` learns from unpaired answers instead (``unpaired.jsonl``
beside them: TRL's ``prompt``/``completion``/``label`` format), the pairs only measuring it.

Import-light: torch, transformers, peft and trl load inside the functions that need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ftctl.api import (PluginConfig, TrainResult, UsageError, check_template, ensure_pad, file_sha256, load_model,
                       load_tokenizer)
from ftctl_plugins.trainers import aliases

PAIRS_FILE = "preferences.jsonl"
UNPAIRED_FILE = "unpaired.jsonl"


class PreferenceConfig(PluginConfig):
    beta: float = Field(0.1, gt=0, description="how far the policy may move from the reference (TRL's beta)")
    r: int = Field(16, ge=1, description="LoRA rank of a new adapter (--from continues the version's own)")
    alpha: int = Field(32, ge=1, description="LoRA alpha of a new adapter")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout of a new adapter")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="modules a new adapter wraps; null: peft's default for the architecture")
    epochs: float = Field(1.0, gt=0, description="passes over the training pairs")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; wins over epochs")
    batch_size: int = Field(4, ge=1, description="pairs (dpo) or answers (kto) per device step")
    gradient_accumulation: int = Field(1, ge=1, description="device steps per optimizer step")
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate")
    warmup: float = Field(0.0, ge=0, description="< 1: a ratio of the steps; >= 1: a step count")
    max_length: int = Field(512, ge=16, description="prompt + answer tokens; longer pairs are truncated")
    precision: Literal["auto", "fp32", "bf16"] = Field("fp32", description="bf16 halves memory where the CPU/GPU has it")
    seed: int = Field(42, description="seed of the adapter's initial weights and the data order")
    chat_template: str | None = Field(None, description="a Jinja chat template for bases whose tokenizer has none")

    @field_validator("target_modules", mode="before")
    @classmethod
    def modules_as_written_elsewhere(cls, v):
        return aliases.target_modules(v)


PreferenceConfig.aliases = aliases.subset(PreferenceConfig.model_fields)


# a disliked answer may be blank (the model said nothing, a user rated that down): still text to
# learn against, an end-of-turn right after the prompt; a liked one (chosen, label true) must say something
BLANK_OK = ("rejected", "completion")


def pairs_path(train_file: Path) -> Path:
    return Path(train_file).with_name(PAIRS_FILE)


def read_pairs(path: Path, required: bool = True) -> list[dict[str, Any]]:
    """Every pair, validated first: a pair with a missing side is an error naming its line.
    ``required=False`` (held-out pairs only): a missing or empty file is no pairs."""
    if not path.is_file():
        if not required:
            return []
        raise UsageError(f"no preference pairs: {path} does not exist",
                         hint="`ftctl collect` writes them from corrections and low-rated answers")
    pairs = list(_lines(path, ("prompt", "chosen", "rejected"), "pair",
                        "every pair needs a prompt, a chosen and a rejected answer"))
    if not pairs and required:
        raise UsageError(f"{path.name} has no preference pairs", hint="collect corrections or ratings first")
    return pairs


def unpaired_path(train_file: Path) -> Path:
    return Path(train_file).with_name(UNPAIRED_FILE)


def read_unpaired(path: Path) -> list[dict[str, Any]]:
    """Every unpaired answer, validated first (prompt, completion, a boolean label), like pairs."""
    if not path.is_file():
        raise UsageError(f"no unpaired feedback: {path} does not exist (a snapshot from before collect wrote it)",
                         hint="re-run `ftctl collect --since all` to rebuild the snapshot with it")
    rows = []
    for row in _lines(path, ("prompt", "completion"), "answer",
                      "every line needs a prompt, a completion and a true/false label"):
        if not isinstance(row.get("label"), bool):
            raise UsageError(f"{path.name}:{row['_line']}: the answer has no true/false 'label'",
                             hint="fix or remove the line (nothing was trained)")
        rows.append(row)
    return rows


def _lines(path: Path, sides: tuple[str, ...], what: str, needs: str):
    """The file's JSON objects (``_line``: their line number), each with a prompt and its
    one-message answer lists; a bad line is an error naming it."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                p = json.loads(line)
            except ValueError:
                raise UsageError(f"{path.name}:{n}: not JSON", hint="fix or remove the line; nothing was trained") from None
            for side in sides:
                v = p.get(side) if isinstance(p, dict) else None
                if not v or (side != "prompt" and not _says(v, blank=side in BLANK_OK and p.get("label") is not True)):
                    raise UsageError(f"{path.name}:{n}: the {what} has no {side!r}" + (" answer" if side != "prompt" else ""),
                                     hint=f"{needs}; fix or remove the line (nothing was trained)")
            yield {**p, "_line": n}


def _says(answer, blank: bool) -> bool:
    """A one-message answer list with content: a blank text only where ``blank`` allows it."""
    c = answer[0].get("content") if isinstance(answer, list) and isinstance(answer[0], dict) else None
    return bool(c.strip() or blank) if isinstance(c, str) else bool(c)


def load_policy(base, init_adapter: Path | None, cfg: PreferenceConfig):
    """(model, tokenizer): a trainable LoRA on the base, or with --from the version's adapter; TRL
    copies it into a frozen "ref" adapter, so the version itself is the reference policy."""
    import peft

    tok = load_tokenizer(base, cfg.chat_template)
    check_template(tok)
    ensure_pad(tok)
    model = load_model(base)
    model.config.use_cache = False
    if init_adapter:
        model = peft.PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    else:
        model = peft.get_peft_model(model, peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                           target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    return model, tok


def answer_logps(model, tok, prompt: list[dict], answer: list[dict], max_length: int) -> float:
    """log p(answer | prompt) under ``model``, summed over the answer's tokens."""
    import torch

    # hand-written: TRL scores pairs only inside its training step, with no public scoring call
    head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(prompt + answer, tokenize=False)
    p_ids = tok(head, add_special_tokens=False)["input_ids"]
    ids = tok(full, add_special_tokens=False)["input_ids"][:max_length]
    if len(ids) <= len(p_ids):
        return 0.0
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1).gather(1, x[0, 1:].unsqueeze(1)).squeeze(1)
    return float(lp[len(p_ids) - 1:].sum())


def margins(model, tok, pairs: list[dict], max_length: int) -> dict[str, Any]:
    """Mean held-out margin and the share of pairs whose chosen answer is the likelier one."""
    if not pairs:
        return {"pairs": 0, "margin": None, "accuracy": None}
    was_training = model.training
    model.eval()
    ms = [answer_logps(model, tok, p["prompt"], p["chosen"], max_length)
          - answer_logps(model, tok, p["prompt"], p["rejected"], max_length) for p in pairs]
    model.train(was_training)
    return {"pairs": len(ms), "margin": round(sum(ms) / len(ms), 4),
            "accuracy": round(sum(m > 0 for m in ms) / len(ms), 4)}


def training_args(cls, cfg: PreferenceConfig, out: Path, **extra):
    """TRL's DPOConfig/KTOConfig from our config: the same fields for both trainers."""
    import warnings

    import torch

    # known noise of transformers 5 renaming its checkpointing flags; nothing a user can act on
    warnings.filterwarnings("ignore", message=".*(gradient|activation)_checkpointing.* is deprecated",
                            category=FutureWarning)

    return cls(
        output_dir=str(out), beta=cfg.beta, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
        warmup_steps=int(cfg.warmup) if cfg.warmup >= 1 else cfg.warmup,  # < 1: a ratio
        max_length=cfg.max_length, bf16=cfg.precision == "bf16", use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=1, save_strategy="no",
        # TRL turns checkpointing on by default: for LoRA on small models it costs time, not memory worth saving
        gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0, **extra)


def quiet(trainer, log):
    """stdout belongs to the CLI (--json): progress goes through ctx.log, not transformers' printer."""
    import transformers

    class Lines(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log(f"step {state.global_step}/{state.max_steps}  loss {float(logs['loss']):.4f}"
                    + (f"  reward margin {float(logs['rewards/margins']):.3f}" if "rewards/margins" in logs else ""))

    trainer.remove_callback(transformers.PrinterCallback)
    trainer.add_callback(Lines())
    return trainer


def finish(trainer, model, tok, out: Path, heldout: list[dict], before: dict, cfg: PreferenceConfig,
           seconds: float, data: dict, name: str):
    """Save the trained adapter (only "default") and build the TrainResult."""
    import peft
    import torch
    import transformers
    import trl

    after = margins(model, tok, heldout, cfg.max_length)
    adapter = out / "adapter"
    model.save_pretrained(adapter, selected_adapters=["default"], safe_serialization=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return TrainResult(
        adapter_dir=adapter, steps=trainer.state.global_step,
        metrics={"train_loss": round(sum(losses) / len(losses), 4) if losses else None,
                 "first_loss": round(losses[0], 4) if losses else None,
                 "last_loss": round(losses[-1], 4) if losses else None,
                 "margin_before": before["margin"], "margin_after": after["margin"],
                 "pref_accuracy_before": before["accuracy"], "pref_accuracy_after": after["accuracy"]},
        tokens=0, tokens_per_s=None, seconds=round(seconds, 1),
        params={**cfg.model_dump(exclude={"chat_template"}), "method": name}, seed=cfg.seed,
        data={**data, "heldout_pairs": after["pairs"]},
        libraries={"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                   "trl": trl.__version__})


def fit(name: str, trl_classes: tuple, rows: list[dict], request, cfg: PreferenceConfig, ctx,
        heldout: list[dict], files: dict[str, Path], counts: dict, describe: str, **trl_args):
    """The run both trainers share: seed, policy (+ reference), held-out margin before, TRL's
    trainer on ``rows``, margin after, the adapter and its TrainResult. ``files`` (lineage key:
    path) are the data files it read; each is recorded with its sha256."""
    import time

    from datasets import Dataset
    from transformers import set_seed

    set_seed(cfg.seed)
    model, tok = load_policy(request.base, request.init_adapter, cfg)
    before = margins(model, tok, heldout, cfg.max_length)
    ctx.log(f"{name}: {describe} (beta {cfg.beta}); held-out margin before {before['margin']} "
            f"on {before['pairs']} pairs")
    out = Path(request.output_dir)
    config_cls, trainer_cls = trl_classes  # e.g. (DPOConfig, DPOTrainer)
    # the trackers the core set up (ftctl.lib.tracking): TensorBoard, MLflow, W&B, as for lora
    trl_args = {"report_to": list(request.report_to), "run_name": request.run_name, **trl_args}
    trainer = quiet(trainer_cls(model=model, args=training_args(config_cls, cfg, out, **trl_args), processing_class=tok,
                                train_dataset=Dataset.from_list(rows)), ctx.log)
    started = time.monotonic()
    trainer.train()
    data = dict(counts)
    for key, path in files.items():
        data[key] = str(path.relative_to(ctx.root) if path.is_relative_to(ctx.root) else path)
        data[f"{key}_sha256"] = file_sha256(path)
    result = finish(trainer, model, tok, out, heldout, before, cfg, time.monotonic() - started, data, name)
    ctx.log(f"{name}: held-out margin {before['margin']} -> {result.metrics['margin_after']}")
    return result
