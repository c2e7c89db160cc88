"""The `lora` trainer's step: loss per trained token of the whole step, logits only where trained.

transformers' ``Trainer`` runs the loop (resume, DDP, accelerate); this subclass changes what a
step computes, in three ways:

- Logits only where there are labels: a forward pre-hook on the output layer keeps the hidden
  states whose next token is trained, so ``lm_head`` and the cross-entropy see K trained tokens
  instead of every token (vocabulary x tokens was most of the peak memory). The hook sits inside
  the model's own forward, so PEFT (an adapted ``lm_head`` included), DDP's gradient sync and
  accelerate's wrappers all still run. transformers' ``logits_to_keep`` cannot do this: it keeps
  the same positions in every row.
- The loss is the sum over trained tokens divided by the trained tokens of the whole optimizer
  step (all micro-batches, all processes: transformers' ``num_items_in_batch``), so neither
  packing nor gradient accumulation reweights conversations.
- A micro-batch's rows run forward/backward in chunks of at most ``token_budget`` padded tokens,
  so activation memory follows ``max_length``, not ``batch_size`` x ``max_length``.

Imported only when training starts (torch and transformers at module level).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import transformers

from ftctl.api import IGNORE


class LabelledPositions:
    """Forward pre-hook for the output layer: [B, T, H] -> [1, K, H], the positions to score."""

    def __init__(self):
        self.mask: torch.Tensor | None = None  # [B, T-1]: the next token is trained

    def __call__(self, module, args):
        if self.mask is None:  # generation, or any call outside a loss computation
            return None
        hidden = args[0]
        return (hidden[:, :-1][self.mask].unsqueeze(0), *args[1:])

    @contextlib.contextmanager
    def only(self, labels: torch.Tensor):
        self.mask = labels[:, 1:] != IGNORE
        try:
            yield
        finally:
            self.mask = None


def install(model) -> tuple[LabelledPositions, object]:
    """Hook the (possibly PEFT-wrapped, possibly LoRA-adapted) output layer; returns (hook, handle)."""
    hook = LabelledPositions()
    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    return hook, handle


def labelled_loss(model, hook: LabelledPositions, batch: dict, divide_by=None):
    """Summed cross-entropy of the trained tokens / ``divide_by`` (default: their count)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "lengths")}
    with hook.only(labels):
        outputs = model(**inputs)
    targets = labels[:, 1:][labels[:, 1:] != IGNORE]
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss / (divide_by if divide_by is not None else max(targets.numel(), 1)), outputs


def chunks(batch: dict, budget: int) -> list[dict]:
    """Consecutive rows, each group at most ``budget`` padded tokens (at least one row), trimmed
    to its own widest row."""
    lengths = batch["lengths"].tolist()
    groups, start = [], 0
    while start < len(lengths):
        end, width = start + 1, lengths[start]
        while end < len(lengths) and max(width, lengths[end]) * (end + 1 - start) <= budget:
            width = max(width, lengths[end])
            end += 1
        groups.append((start, end, width))
        start = end
    if len(groups) == 1 and groups[0][2] == batch["input_ids"].shape[1]:
        return [batch]
    return [{k: (v[a:b, :w] if k != "lengths" else v[a:b]) if torch.is_tensor(v) else v
             for k, v in batch.items()} for a, b, w in groups]


class LabelledTrainer(transformers.Trainer):
    """``transformers.Trainer`` with the step described in the module docstring."""

    def __init__(self, *args, token_budget: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_budget = token_budget
        self.hook, self._handle = install(self.model)
        # our loss is already normalised over the whole step: transformers must count the step's
        # trained tokens (num_items_in_batch) and must not divide by the accumulation steps again
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True

    def remove_hook(self) -> None:
        self._handle.remove()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = labelled_loss(model, self.hook, inputs, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every process's tokens and DDP averages the gradients
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.is_deepspeed_enabled:  # DeepSpeed counts backward calls: one per micro-batch
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        if num_items_in_batch is None:  # not expected (we asked for it); keep a per-step mean anyway
            num_items_in_batch = (inputs["labels"][:, 1:] != IGNORE).sum() * self.current_gradient_accumulation_steps
        parts = chunks(inputs, self.token_budget)
        total = None
        for i, part in enumerate(parts):
            # gradients of a micro-batch's chunks are synced once, with the last chunk
            sync = contextlib.nullcontext() if i == len(parts) - 1 else self.accelerator.no_sync(model)
            with sync:
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, part, num_items_in_batch=num_items_in_batch)
                self.accelerator.backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
        return total
