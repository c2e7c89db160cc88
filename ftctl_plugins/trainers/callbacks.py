"""transformers callbacks of the `lora` trainer (imported only when training starts)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from transformers import TrainerCallback

from ftctl.api import write_text
from ftctl_plugins.trainers.checkpoints import COMPLETE, TrainingFailed


class CompleteMarker(TrainerCallback):
    """transformers writes checkpoints file by file; a crash or a full disk mid-save leaves a
    partial directory. `on_save` runs after the last file, so the marker means complete."""

    def on_save(self, args, state, control, **kw):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and ckpt.is_dir():
            write_text(ckpt / COMPLETE, str(state.global_step))


class PartialCheckpointing(TrainerCallback):
    """Checkpoint only the first ``share`` of the decoder layers (transformers' Trainer has just
    switched checkpointing on for all of them). The last layers keep their activations: the
    backward pass reaches them first, so their memory is free again before any recompute."""

    def __init__(self, share: float):
        self.share = share

    def on_train_begin(self, args, state, control, model=None, **kw):
        from ftctl.api import checkpointed_layers

        try:
            from transformers.modeling_layers import GradientCheckpointingLayer
        except ImportError:  # transformers < 4.52 checkpoints a model's layers all or none: all, then
            return
        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        keep = checkpointed_layers(self.share, len(layers))
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i < keep


class KeepMasks(TrainerCallback):
    """The checkpointed layers' folded dropouts keep their masks for the replay (lean.keep_masks);
    after PartialCheckpointing, which decides the layers."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        from ftctl_plugins.trainers.lean import keep_masks

        keep_masks(model)


class Progress(TrainerCallback):
    """Step, loss, tokens/s, ETA and memory: a rich bar on a terminal, log lines otherwise.

    Also stops the run on a non-finite loss (transformers would train on through NaNs)."""

    def __init__(self, log, collator, show: bool):
        self.log, self.collator, self.show = log, collator, show
        self.tokens = 0
        self.rows = 0  # rows the collator made while training (packing: fewer than conversations)
        self.seconds = 0.0
        self.bar = self.task = None
        self.t0 = time.monotonic()
        self.tokens0 = self.rows0 = self.steps0 = self.steps = 0
        self.last_line = 0.0

    def _measure(self):
        self.tokens = self.collator.tokens - self.tokens0
        self.rows = self.collator.rows_made - self.rows0
        self.seconds = time.monotonic() - self.t0

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.monotonic()
        self.tokens0, self.rows0 = self.collator.tokens, self.collator.rows_made
        self.steps0 = state.global_step  # > 0 when resuming
        if self.show and args.should_save:
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Bar(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                           TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingFailed(f"the training loss became {loss} at step {state.global_step}",
                                 hint="lower train.lora.learning_rate or use precision: fp32; no version was created")
        self._measure()
        if loss is None or not args.should_save:
            return
        tps = self.tokens / self.seconds if self.seconds else 0
        info = f"loss {loss:.4f}  {tps:,.0f} tok/s  RSS {rss_mb():,.0f} MB"
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step, info=info)
        elif time.monotonic() - self.last_line > 10 or state.global_step == state.max_steps:
            self.last_line = time.monotonic()
            done = state.global_step - self.steps0
            eta = self.seconds / done * (state.max_steps - state.global_step) if done else 0
            self.log(f"step {state.global_step}/{state.max_steps}  {info}  eta {_clock(eta)}")

    def on_train_end(self, args, state, control, **kw):
        self._measure()
        self.steps = state.global_step - self.steps0

    def close(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (what the OS had to give it)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
