"""The `lora` trainer: LoRA and 4-bit QLoRA (bitsandbytes: CUDA, or its CPU backend) on transformers + peft.

The loop itself is transformers' ``Trainer`` (checkpointing, RNG/optimizer/scheduler/data
position resume, DDP under torchrun, accelerate configs, TensorBoard, early stopping). This
module adds what it lacks: chat-format rows with assistant-only loss, packing, a tokenisation
cache, checkpoints that only count once complete, NaN detection and a progress display.

Import-light: torch, transformers and peft load inside :meth:`LoraTrainer.train`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from ftctl.api import (DEVICE_HELP, BaseModelRef, Collator, Encoded, FtctlError, MemoryEstimate, PluginConfig, RunShape,
                       TrainPreview, TrainRequest, TrainResult, Trainer, UsageError, check_device, check_template,
                       compute_dtype, describe, encode, ensure_pad, least_checkpointing, load_dtype, load_model,
                       load_tokenizer, make_plan, mark_trained, predict_memory, probe_devices, read_config, read_jsonl,
                       require_bitsandbytes, resolve_device, select, torch_dtype, write_text)
from ftctl_plugins.trainers import aliases
from ftctl_plugins.trainers.checkpoints import TrainingFailed, drop_incomplete, latest_checkpoint
from ftctl_plugins.trainers.heads import HEAD_LOSS_MODELS

CACHE_FORMAT = 1  # bump when chat_format's encoding changes: invalidates cached token rows
# The CPU's default checkpointing share, at least (more where the RAM needs it): checkpointing all
# layers costs a second forward pass per layer; none keeps a step's every activation (SmolLM2-135M
# at 512 tokens, benchmarks/train_throughput.py on a Zen 4 EPYC: all 1.43x TRL's tokens/s at 0.39x
# its peak RSS, 0.6 1.64x at 0.42x, none 1.81x at 0.50x; docs/performance.md "Training")
CPU_CHECKPOINTING = 0.6
CPU_ROOM = 0.8  # of the RAM: the prediction runs up to ~10% low, and the machine runs other things


_BOOL_WORDS = {**dict.fromkeys(("true", "on", "yes", "y", "t", "1"), True),
               **dict.fromkeys(("false", "off", "no", "n", "f", "0"), False)}


class LoraConfig(PluginConfig):
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (the update is scaled by alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    # all-linear and 1e-3: chosen on benchmarks/quality.py (docs/train.md, "Defaults, chosen by measurement")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        "all-linear", description="all-linear, a list of module names, or None for peft's per-architecture default")
    epochs: float = Field(3.0, gt=0, description="passes over the training set")
    max_steps: int | None = Field(None, ge=1, description="wins over epochs")
    batch_size: int = Field(4, ge=1, description="conversations per micro-batch")
    gradient_accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts"] = Field("cosine", description="learning-rate schedule")
    warmup: float = Field(0.03, ge=0, description="< 1: a ratio of the steps; >= 1: a step count")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_length: int = Field(1024, ge=8, description="tokens per training row; longer conversations are skipped (counted)")
    gradient_checkpointing: bool | float | None = Field(
        None, description="recompute activations: less memory, slower; a number between 0 and 1 checkpoints that "
                          "share of the decoder layers (the first ones). Unset: all under QLoRA, none on a GPU; on "
                          "the CPU the fewest layers, at least 60%, whose predicted peak fits in 80% of the RAM")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: weights in bf16 on CUDA (fp16 before Ampere), fp32 on the CPU "
                            "(bf16 autocast where the CPU has AVX-512)")
    device: str = Field("auto", description=DEVICE_HELP)
    seed: int = Field(42, description="seed of the adapter's initial weights and the data order")
    packing: bool = Field(True, description="pack several conversations into one row of max_length tokens")
    qlora: bool = Field(False, description="4-bit NF4 base (QLoRA) through bitsandbytes, `pip install 'ftctl[qlora]'`: "
                                            "CUDA, or bitsandbytes' CPU backend")
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints (resume points)")
    eval_every: int | None = Field(None, ge=1, description="with early_stopping: evaluate (and checkpoint) this often")
    early_stopping: int | None = Field(None, ge=1, description="patience, in evaluations of val loss")
    chat_template: str | None = Field(None, description="a Jinja template for bases whose tokenizer has none")
    log_every: int = Field(1, ge=1, description="steps between progress lines")

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v):
        return check_device(v)

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing(cls, v):
        if isinstance(v, str):
            word = v.strip().lower()
            if word in _BOOL_WORDS:  # pydantic's words for a bool
                return _BOOL_WORDS[word]
            with contextlib.suppress(ValueError):  # not a number: the error below
                v = float(word)
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, (int, float)) and 0 <= v <= 1:
            return v if 0 < v < 1 else bool(v)
        raise ValueError(f"{v!r} is not true, false, or the share of decoder layers to checkpoint "
                         "(a number between 0 and 1)")

    @field_validator("target_modules", mode="before")
    @classmethod
    def modules_as_written_elsewhere(cls, v):
        return aliases.target_modules(v)


LoraConfig.aliases = aliases.subset(LoraConfig.model_fields)


class LoraTrainer(Trainer):
    name = "lora"
    Config = LoraConfig

    def preflight(self) -> None:
        """Cheap checks before anything loads (the core calls this first): bitsandbytes for
        QLoRA, a device that exists, a precision it has."""
        if self.config.qlora:
            try:
                require_bitsandbytes()
            except FtctlError as e:
                raise UsageError(e.message, hint=e.hint) from None
        self.dtype(self.device())

    def device(self, capability=None):
        """The configured device on this machine (an error when it does not exist)."""
        return resolve_device(self.config.device, capability or probe_devices())

    def dtype(self, device) -> str:
        """What the weights load in (QLoRA: what its 4-bit layers compute in)."""
        c = self.config
        if c.precision == "fp16" and not device.is_cuda:
            raise UsageError("precision fp16 needs a CUDA GPU (fp16 mixed precision does not run on the CPU)",
                             hint="use precision: auto, fp32 or bf16 on this machine")
        return compute_dtype(c.precision, device) if c.qlora else load_dtype(c.precision, device)

    def checkpointing(self, device, base: BaseModelRef | None = None, plan=None) -> float:
        """The share of decoder layers checkpointed (0: none, 1: all); as configured when set.
        Unset: all under QLoRA (whose point is memory), none on a GPU. On the CPU, where one step's
        activations weigh about as much as the model, planned from the predicted peak
        (ftctl.lib.memory): the fewest of the first layers, at least CPU_CHECKPOINTING, whose peak
        fits in CPU_ROOM of the RAM, else all (without a base to plan from: CPU_CHECKPOINTING).
        The results are the same; a checkpointed layer runs its forward pass twice."""
        c = self.config
        if c.gradient_checkpointing is not None:
            return float(c.gradient_checkpointing)
        if c.qlora:
            return 1.0
        if device.is_cuda:
            return 0.0
        if base is None:
            return CPU_CHECKPOINTING
        trained = _trained_share(plan)
        key = (str(device), device.total_bytes, base.path, trained)
        if key not in self._planned:  # one meta forward: the preview's check and the run ask alike
            self._planned[key] = least_checkpointing(
                read_config(base.path, base.trust_remote_code), self.shape(device, trained, 1.0), device,
                self._prepare(device), floor=CPU_CHECKPOINTING, room=CPU_ROOM)
        return self._planned[key]

    @functools.cached_property
    def _planned(self) -> dict:
        return {}

    def memory(self, base: BaseModelRef, device=None, plan=None) -> MemoryEstimate:
        """Peak memory predicted from the base's config on the meta device (ftctl.lib.memory)."""
        device = device or self.device()
        shape = self.shape(device, _trained_share(plan), self.checkpointing(device, base, plan))
        return predict_memory(read_config(base.path, base.trust_remote_code), shape, device, self._prepare(device))

    def _prepare(self, device):
        """The dropout the trainer folds keeps less, and under bf16 autocast the frozen linear
        weights are stored in bf16 (lean.py): the prediction counts them as the run has them."""
        if not _lean(self.config, device):
            return None
        return functools.partial(_lean_prepare, bf16=_cpu_autocast(self.config, device) == "bfloat16")

    def shape(self, device, trained_share: float = 1.0, checkpointing: float | None = None) -> RunShape:
        c = self.config
        # a micro-batch runs forward/backward in chunks of at most max_length tokens (loss.py)
        return RunShape(lora_r=c.r, target_modules=c.target_modules, qlora=c.qlora, load_dtype=self.dtype(device),
                        tokens=c.max_length, trained_share=trained_share,
                        gradient_checkpointing=self.checkpointing(device) if checkpointing is None else checkpointing,
                        head_loss_models=HEAD_LOSS_MODELS, autocast=_cpu_autocast(self.config, device))

    # --- data ---------------------------------------------------------------------------

    def tokenizer(self, base):
        tok = load_tokenizer(base, self.config.chat_template)
        check_template(tok)
        ensure_pad(tok)
        return tok

    def encode_file(self, tok, base, path: Path):
        """Encoded rows of one snapshot file, cached by (file, base, template) content."""

        h = hashlib.sha256(f"{CACHE_FORMAT}\0{base.sha256}\0{tok.chat_template}\0".encode())
        h.update(Path(path).read_bytes())
        cache = self.ctx.cache_dir / "tokens" / f"{h.hexdigest()}.json"
        if cache.is_file():
            rows = json.loads(cache.read_text())
        else:
            rows = []
            for ex in read_jsonl(path):
                enc = encode(tok, _target_messages(ex), ex.tools)
                rows.append(None if enc is None else [enc.input_ids, enc.labels])
            write_text(cache, json.dumps(rows))
        return [None if r is None else Encoded(*r) for r in rows]

    def rows(self, encoded, what: str):
        """Filter by max_length; an unusable dataset is an error that says why."""

        kept, report = select(encoded, self.config.max_length)
        if not kept and what == "train":
            if not encoded:
                raise UsageError("the training dataset is empty", hint="run `ftctl collect` first (or add data)")
            why = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in report.skipped.items())
            hint = (f"raise train.lora.max_length (now {self.config.max_length}; longest is "
                    f"{max(report.lengths)} tokens)" if report.skipped.get("longer_than_max_length")
                    else "every conversation needs at least one assistant turn to learn from")
            raise UsageError(f"no trainable examples in the {what} set ({why})", hint=hint)
        return kept, report

    def features(self, rows):
        """One dataset item per conversation: the sampler puts ``batch_size`` of them in each
        micro-batch whether packed or not; the collator packs a micro-batch into rows."""
        return [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]

    # --- training -----------------------------------------------------------------------

    def plan(self, base: BaseModelRef, train_file: Path, processes: int = 1):
        tok = self.tokenizer(base)
        rows, _ = self.rows(self.encode_file(tok, base, train_file), "train")
        return self.plan_of(rows, processes)

    def plan_of(self, rows, processes: int = 1):
        """ftctl.lib.plan.TrainPlan of these encoded conversations (transformers' step arithmetic)."""

        c = self.config
        return make_plan([len(r) for r in rows], [r.trained for r in rows], batch_size=c.batch_size,
                         gradient_accumulation=c.gradient_accumulation, processes=processes, epochs=c.epochs,
                         max_steps=c.max_steps, warmup=c.warmup, scheduler=c.scheduler, max_length=c.max_length,
                         packing=c.packing, seed=c.seed)

    def preview(self, base: BaseModelRef, train_file: Path) -> TrainPreview:
        tok = self.tokenizer(base)
        encoded = self.encode_file(tok, base, train_file)
        usable = [e for e in encoded if e is not None]
        first = next((e for e in usable if len(e) <= self.config.max_length), usable[0] if usable else None)
        return TrainPreview(max_length=self.config.max_length, lengths=[len(e) for e in usable],
                            examples=len(encoded), no_assistant_turn=len(encoded) - len(usable),
                            example=mark_trained(tok, first) if first else None)

    def train(self, request: TrainRequest) -> TrainResult:
        self.preflight()
        import torch
        import transformers
        from transformers import TrainingArguments, set_seed

        import peft
        from ftctl_plugins.trainers.callbacks import CompleteMarker, KeepMasks, PartialCheckpointing, Progress, peak_rss_mb
        from ftctl_plugins.trainers.lean import bf16_frozen_linears, fold_dropout
        from ftctl_plugins.trainers.loss import LabelledTrainer

        cfg = self.config
        log = self.ctx.log
        out = Path(request.output_dir)
        tok = self.tokenizer(request.base)
        train_rows, train_report = self.rows(self.encode_file(tok, request.base, request.train_file), "train")
        val_rows = []
        if request.val_file and Path(request.val_file).is_file():
            val_rows, _ = self.rows(self.encode_file(tok, request.base, request.val_file), "val")
        train_ds = self.features(train_rows)
        val_ds = self.features(val_rows) if val_rows else None

        plan = self.plan_of(train_rows, int(os.environ.get("WORLD_SIZE", "1")))
        if int(os.environ.get("RANK", "0")) == 0:
            for line in describe(plan):
                log(line)

        quiet_known_warnings()
        set_seed(cfg.seed)  # before the adapter exists: its initial weights come from this seed
        device = self.device()
        if _distributed() and device.is_cuda:  # one GPU per process: torchrun's local rank
            device = resolve_device(int(os.environ.get("LOCAL_RANK", "0")), probe_devices())
        if device.is_cuda:
            torch.cuda.set_device(device.index)
        dtype = self.dtype(device)
        amp = _mixed_precision(cfg.precision, device)
        share = self.checkpointing(device, request.base, plan)
        checkpointing = share > 0
        quantization = _quantization(cfg, dtype)
        log(f"loading {request.base.ref} on {device}: "
            + (f"4-bit NF4 (QLoRA), computing in {dtype}" if cfg.qlora else dtype)
            + ("" if not checkpointing else ", gradient checkpointing" if share == 1
               else f", gradient checkpointing ({share:.0%} of the layers)")
            + (" (planned from the predicted peak; train.lora.gradient_checkpointing sets it)"
               if cfg.gradient_checkpointing is None and _lean(cfg, device) else ""))
        model = load_model(request.base, dtype=torch_dtype(dtype), quantization=quantization, device=device)
        if cfg.qlora and not device.is_cuda:
            _train_layout(model)
        model.config.use_cache = False
        if cfg.qlora:  # norms and embeddings to float32, inputs that need grads, checkpointing
            model = peft.prepare_model_for_kbit_training(
                model, checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False})
        if request.init_adapter:
            model = peft.PeftModel.from_pretrained(model, request.init_adapter, is_trainable=True)
        else:
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
                task_type="CAUSAL_LM"))
        if checkpointing:
            model.enable_input_require_grads()
        if _lean(cfg, device):  # the same results, less memory (lean.py)
            fold_dropout(model)
            if amp == "bf16":
                bf16_frozen_linears(model)
        lora_cfg = model.peft_config["default"]

        early = bool(cfg.early_stopping and val_ds)
        # early stopping keeps the best checkpoint, so evaluations and checkpoints share one cadence
        every = (cfg.eval_every or cfg.checkpoint_every) if early else cfg.checkpoint_every
        args = TrainingArguments(
            output_dir=str(out),
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            lr_scheduler_type=cfg.scheduler,
            warmup_steps=int(cfg.warmup) if cfg.warmup >= 1 else cfg.warmup,  # < 1: a ratio
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1,
            logging_steps=cfg.log_every,
            logging_nan_inf_filter=False,  # a NaN must be seen, not averaged away
            save_strategy="steps",
            save_steps=every,
            save_total_limit=2,  # the newest complete checkpoint survives a failed save of the next
            eval_strategy="steps" if early else "no",
            eval_steps=every if early else None,
            load_best_model_at_end=early,
            metric_for_best_model="eval_loss" if early else None,
            greater_is_better=False if early else None,
            bf16=amp == "bf16",
            fp16=amp == "fp16",
            use_cpu=not device.is_cuda,
            **_checkpointing_arg(checkpointing),
            seed=cfg.seed,
            data_seed=cfg.seed,
            train_sampling_strategy="random",  # the same conversations per step, packed or not
            remove_unused_columns=False,
            dataloader_num_workers=0,
            report_to=list(request.report_to),  # set up by the core (ftctl.lib.tracking)
            run_name=request.run_name,
            disable_tqdm=True,
            ddp_backend="gloo" if _distributed() and not torch.cuda.is_available() else None,
            ddp_find_unused_parameters=False,
        )
        collator = Collator(tok.pad_token_id, pack_to=cfg.max_length if cfg.packing else None)
        progress = Progress(log, collator, request.show_progress)
        callbacks = [progress, CompleteMarker()]
        if 0 < share < 1:
            callbacks.append(PartialCheckpointing(share))
        if checkpointing and _lean(cfg, device):
            callbacks.append(KeepMasks())
        if early:
            callbacks.append(transformers.EarlyStoppingCallback(cfg.early_stopping))
        trainer = LabelledTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                                  data_collator=collator, callbacks=callbacks, token_budget=cfg.max_length)
        trainer.remove_callback(transformers.PrinterCallback)  # stdout belongs to the CLI (--json)
        checkpoint = latest_checkpoint(out) if request.resume else None
        if request.resume and checkpoint is None:
            log("no complete checkpoint yet: starting this run from step 0")
        if checkpoint:
            log(f"resuming from {checkpoint.name}")
        started = time.monotonic()
        try:
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except OSError as e:
            drop_incomplete(out)
            if e.errno == errno.ENOSPC:
                raise TrainingFailed("disk full while training (a checkpoint could not be saved)",
                                     hint="free space, then `ftctl train --resume` continues from the last "
                                          "complete checkpoint") from None
            raise
        finally:
            progress.close()
        seconds = time.monotonic() - started
        val_loss = trainer.evaluate()["eval_loss"] if val_ds else None
        trainer.remove_hook()
        adapter = out / "adapter"
        if trainer.args.should_save:
            if adapter.exists():
                shutil.rmtree(adapter)
            trainer.model.save_pretrained(adapter, safe_serialization=True)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if trainer.args.should_save:  # the whole curve (loss, learning rate, grad norm per logged step)
            write_text(out / "log_history.json", json.dumps(trainer.state.log_history))
        return TrainResult(
            adapter_dir=adapter,
            steps=trainer.state.global_step,
            metrics={"train_loss": _round(output.training_loss), "val_loss": _round(val_loss),
                     "first_loss": _round(losses[0] if losses else None),
                     "last_loss": _round(losses[-1] if losses else None)},
            tokens=progress.tokens,
            tokens_per_s=round(progress.tokens / progress.seconds, 1) if progress.seconds else None,
            seconds=round(seconds, 1),
            params={**cfg.model_dump(exclude={"chat_template"}), "precision": amp or "fp32", "weights": dtype,
                    "device": str(device), "gradient_checkpointing": share if 0 < share < 1 else checkpointing,
                    "target_modules": sorted(lora_cfg.target_modules)},
            seed=cfg.seed,
            data={"examples": train_report.to_dict(), "trained_rows": len(train_ds), "packed": cfg.packing,
                  "rows_per_step": round(progress.rows / max(progress.steps, 1), 2)},
            peak_rss_mb=round(peak_rss_mb()),
            libraries={"torch": torch.__version__, "transformers": transformers.__version__,
                       "peft": peft.__version__, **_bnb_version(cfg)},
            base_quantization=quantization,
        )


# --- helpers ------------------------------------------------------------------------------


def _target_messages(ex) -> list[dict]:
    """A user's correction replaces the last assistant answer: it is what we want learned."""
    msgs = [dict(m) for m in ex.messages]
    if ex.correction:
        for m in reversed(msgs):
            if m.get("role") == "assistant":
                m["content"] = ex.correction
                break
    return msgs


def _checkpointing_arg(on: bool) -> dict:
    """transformers 5 renamed TrainingArguments.gradient_checkpointing (the old name warns)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def _lean(cfg: LoraConfig, device) -> bool:
    """lean.py's step: on the CPU (CUDA draws dropout masks its own way), LoRA over a full-precision
    base (4-bit layers are bitsandbytes' own, measured apart: benchmarks/memory.py's QLoRA row)."""
    return not device.is_cuda and not cfg.qlora


def _trained_share(plan) -> float:
    """The share of a step's tokens that carry loss (logits are computed there only: loss.py)."""
    return min(1.0, plan.trained_tokens_per_step / plan.tokens_per_step) if plan and plan.tokens_per_step else 1.0


def _lean_prepare(model, bf16: bool) -> None:
    """What train() does to the LoRA model on lean.py's path (here on the meta model)."""
    from ftctl_plugins.trainers.lean import bf16_frozen_linears, fold_dropout

    fold_dropout(model)
    if bf16:
        bf16_frozen_linears(model)


def _cpu_autocast(cfg: LoraConfig, device) -> str | None:
    """The dtype autocast runs matmuls in over float32 weights on lean.py's path (CPU LoRA), for the
    memory prediction: bfloat16 where the run has bf16 autocast. QLoRA's 4-bit layers are
    bitsandbytes' own (its row of benchmarks/memory.py is measured as it is); on CUDA the weights
    load in the autocast dtype already."""
    return "bfloat16" if _lean(cfg, device) and _mixed_precision(cfg.precision, device) == "bf16" else None


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _use_bf16(precision: str) -> bool:
    """bf16 autocast for ``precision`` on this machine's default device (benchmarks use it too)."""
    import torch

    if precision == "bf16":
        return True
    if precision != "auto":
        return False
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and _cpu_has_bf16()


def _mixed_precision(precision: str, device) -> str | None:
    """Autocast for the run: bf16/fp16 as configured; auto: bf16 (fp16 before Ampere) on CUDA, bf16
    on CPUs with AVX-512 (oneDNN), none elsewhere."""
    import torch

    if precision in ("bf16", "fp16"):
        return precision
    if precision == "fp32":
        return None
    if device.is_cuda:
        return "bf16" if device.bf16 else "fp16"
    return "bf16" if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else None


def _cpu_has_bf16() -> bool:
    # oneDNN runs bf16 fast on AVX-512 cores (natively with AVX512_BF16/AMX); elsewhere it is slower
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16", "avx512f"))


def _quantization(cfg: LoraConfig, compute: str) -> dict | None:
    """How the base loads under QLoRA (recorded: export and eval load it the same way)."""
    if not cfg.qlora:
        return None
    return {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": compute}


def _train_layout(model) -> None:
    """Keep 4-bit weights in the layout the backward pass reads, on bitsandbytes' CPU backend.

    bitsandbytes 0.50 on a CPU with AVX-512 BF16 repacks a 4-bit weight, in place, for its fast
    inference kernel the first time the layer runs in eval mode without gradients (the validation
    loss). That kernel has no backward: steps after a mid-run evaluation (early stopping) would
    not train through those layers, and a layer whose input width is not a multiple of 64 fails to
    repack at all. Training runs every 4-bit layer on the generic path instead (validation is
    slower; the export dequantizes, so nothing after training runs 4-bit layers)."""
    bnb = require_bitsandbytes()
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False


def _bnb_version(cfg: LoraConfig) -> dict:
    return {"bitsandbytes": require_bitsandbytes().__version__} if cfg.qlora else {}


def quiet_known_warnings() -> None:
    """Deprecation notices of the libraries that nothing a user does can act on."""
    # peft reads a property and calls a method transformers 5 deprecated (renamed "activation_...")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*", category=FutureWarning)
    # bitsandbytes 0.50 says on import that it trusts the 'kernels-community' hub repository
    warnings.filterwarnings("ignore", message=".*kernels-community.*")


def _round(x):
    return None if x is None else round(float(x), 4)
