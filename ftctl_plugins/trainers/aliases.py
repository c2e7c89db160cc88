"""Other tools' names for the trainers' settings: a config copied from Axolotl, LLaMA-Factory,
Unsloth (TRL/transformers' TrainingArguments) keeps working.

Only names whose meaning is exactly ftctl's are aliases (stored under ftctl's name). Settings
that mean something else here (Axolotl's ``lora_target_linear``, ``bf16``) are not: they get
"unknown key" with a "did you mean" instead of being guessed at.
"""

from __future__ import annotations

from typing import Any

# Axolotl (lora_r, micro_batch_size, num_epochs, sequence_len, sample_packing, lr_scheduler),
# LLaMA-Factory (lora_rank, lora_target, cutoff_len), TrainingArguments/TRL as Unsloth writes
# them (per_device_train_batch_size, num_train_epochs, max_seq_length, ...)
LORA_ALIASES: dict[str, str] = {
    "lora_r": "r", "lora_rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target_modules": "target_modules", "lora_target": "target_modules",
    "num_epochs": "epochs", "num_train_epochs": "epochs",
    "micro_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation",
    "lr_scheduler": "scheduler", "lr_scheduler_type": "scheduler",
    "warmup_ratio": "warmup", "warmup_steps": "warmup",
    "sequence_len": "max_length", "cutoff_len": "max_length", "max_seq_length": "max_length",
    "sample_packing": "packing",
    "load_in_4bit": "qlora",
    "save_steps": "checkpoint_every",
    "logging_steps": "log_every",
    "eval_steps": "eval_every",
    "early_stopping_patience": "early_stopping",
}


def target_modules(value: Any) -> Any:
    """LLaMA-Factory writes ``lora_target: all`` or ``q_proj,v_proj``; peft wants all-linear or a list."""
    if value == "all":
        return "all-linear"
    if isinstance(value, str) and value != "all-linear":
        return [m.strip() for m in value.split(",") if m.strip()]
    return value


def subset(fields) -> dict[str, str]:
    """The aliases of the fields a config has."""
    return {k: v for k, v in LORA_ALIASES.items() if v in fields}
