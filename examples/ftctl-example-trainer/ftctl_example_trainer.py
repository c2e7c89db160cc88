"""An example third-party trainer: the smallest complete implementation of ``ftctl.api.Trainer``.

It writes a LoRA adapter in PEFT format whose B matrices are zero, i.e. the base model's own
behaviour, without loading torch. A real trainer (Axolotl, Unsloth, a remote job) keeps this
shape: read ``request.train_file``, write the adapter under ``request.output_dir``, return a
``TrainResult``. The core copies the adapter, versions it (DVC, models.lock, git tag) and never
lets a plugin touch that state.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field

from ftctl.api import (BaseModelRef, PluginConfig, Trainer, TrainPreview, TrainRequest, TrainResult, UsageError,
                       hookimpl, read_jsonl)


class ZeroLoraConfig(PluginConfig):
    r: int = Field(4, ge=1, le=256, description="LoRA rank of the adapter")
    target_modules: list[str] = Field(["q_proj", "v_proj"], min_length=1,
                                      description="linear layers the adapter attaches to (Llama names)")
    seed: int = Field(0, description="seed of the random A matrices")


class ZeroLoraTrainer(Trainer):
    name = "zero_lora"
    Config = ZeroLoraConfig
    config: ZeroLoraConfig

    def preflight(self) -> None:
        if any("." in m for m in self.config.target_modules):
            raise UsageError("target_modules are module names, not paths", hint="e.g. q_proj, v_proj")

    def preview(self, base: BaseModelRef, train_file: Path) -> TrainPreview:
        lengths = [sum(len(m["content"].split()) for m in ex.messages) for ex in read_jsonl(train_file)]
        return TrainPreview(max_length=2048, lengths=lengths, examples=len(lengths), no_assistant_turn=0)

    def train(self, request: TrainRequest) -> TrainResult:
        import numpy as np
        from safetensors.numpy import save_file

        started = time.monotonic()
        examples = sum(1 for _ in read_jsonl(request.train_file))
        if not examples:
            raise UsageError("the training dataset is empty", hint="run `ftctl collect` first")
        cfg = json.loads((request.base.path / "config.json").read_text())
        hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
        heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
        out_dims = {"q_proj": hidden, "o_proj": hidden, "k_proj": hidden * kv_heads // heads,
                    "v_proj": hidden * kv_heads // heads}
        rng = np.random.default_rng(self.config.seed)
        tensors = {}
        for i in range(layers):
            for m in self.config.target_modules:
                prefix = f"base_model.model.model.layers.{i}.self_attn.{m}"
                tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.02, (self.config.r, hidden)).astype(np.float32)
                tensors[f"{prefix}.lora_B.weight"] = np.zeros((out_dims.get(m, hidden), self.config.r), np.float32)
        adapter = request.output_dir / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(adapter / "adapter_model.safetensors"))
        (adapter / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.config.r, "lora_alpha": self.config.r,
            "lora_dropout": 0.0, "target_modules": self.config.target_modules, "bias": "none",
            "base_model_name_or_path": request.base.ref}, indent=2))
        self.ctx.log(f"wrote a zero LoRA (r={self.config.r}) for {examples} examples")
        return TrainResult(adapter_dir=adapter, steps=0, metrics={"train_loss": None, "examples": examples},
                           tokens=0, tokens_per_s=None, seconds=round(time.monotonic() - started, 3),
                           params=self.config.model_dump(), seed=self.config.seed,
                           data={"examples": examples}, libraries={"numpy": np.__version__})


@hookimpl
def register_trainers(register):
    register(ZeroLoraTrainer)
