"""The training plan: what a run will do, and warnings when it cannot teach the model much.

Optimizer steps, conversations and tokens per step, epochs, warmup and where the LR schedule
ends, computed the way transformers' ``Trainer`` computes them (so ``--dry-run`` says what
``train`` does). Pure arithmetic: no torch, usable by any trainer that steps the same way.
"""

from __future__ import annotations

import math
import random

from ftctl.kinds import TrainPlan  # the contract's type; the arithmetic that fills it is here

MIN_STEPS = 100  # below this LoRA rarely learns a task (issue 10: 57 steps learned nothing)
DECAYING = ("linear", "cosine", "cosine_with_restarts")


def make_plan(lengths: list[int], trained: list[int], *, batch_size: int, gradient_accumulation: int = 1,
              processes: int = 1, epochs: float, max_steps: int | None, warmup: float, scheduler: str,
              max_length: int, packing: bool, seed: int = 0) -> TrainPlan:
    """``lengths``/``trained``: tokens and trained tokens of each trainable conversation."""
    n = len(lengths)
    per_step = batch_size * gradient_accumulation * processes
    batches = math.ceil(math.ceil(n / processes) / batch_size)  # DistributedSampler pads to equal shares
    steps_per_epoch = max(math.ceil(batches / gradient_accumulation), 1)
    steps = max_steps or math.ceil(epochs * steps_per_epoch)
    seen = steps / steps_per_epoch
    warm = int(warmup) if warmup >= 1 else math.ceil(steps * warmup)
    p = TrainPlan(
        conversations=n, processes=processes, conversations_per_step=per_step, steps_per_epoch=steps_per_epoch,
        optimizer_steps=steps, epochs=round(seen, 2),
        tokens_per_step=round(sum(lengths) / max(n, 1) * min(per_step, n)),
        trained_tokens_per_step=round(sum(trained) / max(n, 1) * min(per_step, n)),
        rows_per_step=_rows_per_step(lengths, batch_size, gradient_accumulation, max_length if packing else None,
                                     seed),
        warmup_steps=warm, scheduler=scheduler,
        schedule_end_epoch=round(seen, 2) if scheduler in DECAYING else None)
    p.warnings = _warnings(p, batch_size, max_steps)
    return p


def _rows_per_step(lengths, batch_size, accumulation, pack_to, seed) -> float:
    """Rows per optimizer step with the collator's first-fit-decreasing packing (one shuffle)."""
    if not lengths:
        return 0.0
    if pack_to is None:
        return float(min(batch_size, len(lengths)) * accumulation)
    order = lengths[:]
    random.Random(seed).shuffle(order)
    bins = 0
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for g in groups:
        room: list[int] = []
        for n in sorted(g, reverse=True):
            i = next((i for i, free in enumerate(room) if n <= free), None)
            if i is None:
                room.append(max(pack_to, n) - n)
            else:
                room[i] -= n
        bins += len(room)
    return round(bins / len(groups) * accumulation, 2)


def _warnings(p: TrainPlan, batch_size: int, max_steps: int | None) -> list[str]:
    out = []
    if p.optimizer_steps < MIN_STEPS:
        longer = (f"raise max_steps (now {max_steps})" if max_steps else
                  f"raise epochs (~{math.ceil(MIN_STEPS / p.steps_per_epoch)} for {MIN_STEPS} steps)")
        out.append(f"only {p.optimizer_steps} optimizer steps: LoRA rarely learns a task in fewer than "
                   f"~{MIN_STEPS} updates; lower batch_size (now {batch_size}), {longer}, or add data")
    if max_steps and p.epochs < 1:
        out.append(f"the LR schedule ends at step {p.optimizer_steps}, after {p.epochs:.0%} of the training "
                   f"data: most conversations are never seen; raise max_steps to at least {p.steps_per_epoch} "
                   f"(one epoch) or drop it")
    if p.optimizer_steps and p.warmup_steps >= p.optimizer_steps / 2:
        out.append(f"warmup takes {p.warmup_steps} of {p.optimizer_steps} steps: the learning rate is "
                   f"below its peak for most of the run; lower warmup")
    if p.conversations and p.conversations_per_step > p.conversations:
        out.append(f"one step holds {p.conversations_per_step} conversations but there are only "
                   f"{p.conversations}: every step is the whole data set; lower batch_size")
    return out


def describe(p: TrainPlan | dict) -> list[str]:
    """The plan as lines for people (the CLI and the training log); warnings start with 'warning:'."""
    d = p.to_dict() if isinstance(p, TrainPlan) else p
    end = (f"{d['scheduler']} LR reaches zero at epoch {d['schedule_end_epoch']}" if d["schedule_end_epoch"] is not None
           else f"{d['scheduler']} LR")
    lines = [f"plan: {d['optimizer_steps']} optimizer steps ({d['epochs']} epochs of {d['steps_per_epoch']} steps "
             f"over {d['conversations']} conversations)",
             f"  per step: {d['conversations_per_step']} conversations, ~{d['tokens_per_step']:,} tokens "
             f"({d['trained_tokens_per_step']:,} trained) in ~{d['rows_per_step']:g} rows",
             f"  warmup {d['warmup_steps']} steps; {end}"]
    return lines + [f"warning: {w}" for w in d["warnings"]]
