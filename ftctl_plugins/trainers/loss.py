"""The `lora` trainer's step: loss per trained token of the whole step, logits only where trained.

transformers' ``Trainer`` runs the loop (resume, DDP, accelerate); this subclass changes what a
step computes, in three ways:

- Logits only where there are labels: a forward pre-hook on the output layer keeps the hidden
  states whose next token is trained, so ``lm_head`` and the cross-entropy see K trained tokens
  instead of every token (vocabulary x tokens was most of the peak memory). The hook sits inside
  the model's own forward, so PEFT (an adapted ``lm_head`` included), DDP's gradient sync and
  accelerate's wrappers all still run. transformers' ``logits_to_keep`` cannot do this: it keeps
  the same positions in every row.
- Where the output layer is a plain frozen linear layer and the model's logits are its output
  (``HEAD_LOSS_MODELS``), training never holds the K x vocabulary logits: the loss and the
  gradient for the hidden states are computed together, a few rows at a time, in the forward
  pass (``_HeadLoss``), which keeps only that gradient (K x hidden). Otherwise the logits and
  their float32 copies, log-softmax and gradients were the peak (~100 MB per 128 trained tokens
  at SmolLM2's vocabulary, all alive with every layer's activations); the softmax's backward
  is no longer a separate pass. The same arithmetic as autograd's, in the same dtypes. Under
  autocast the frozen weight is cast to the matmul's dtype once for the run, not once a chunk
  (and the output layer, called with no rows, casts nothing: ``_RowsOnlyHead``).
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

from ftctl.api import IGNORE, RunShape
from ftctl_plugins.trainers.heads import HEAD_LOSS_MODELS


HEAD_LOSS_ELEMENTS = RunShape.head_loss_elements  # logits computed at once by _HeadLoss (rows x vocabulary)


class LabelledPositions:
    """Forward pre-hook for the output layer: [B, T, H] -> [1, K, H], the positions to score.
    With ``head`` (the output layer's frozen weight), the layer computes nothing: the K hidden
    states are kept in ``hidden`` for ``_HeadLoss``."""

    def __init__(self, head: torch.Tensor | None = None):
        self.mask: torch.Tensor | None = None  # [B, T-1]: the next token is trained
        self.head = head
        self.fused = False
        self.hidden: torch.Tensor | None = None
        self.dtype: torch.dtype | None = None  # autocast's, where it was on for the output layer
        self._cast: tuple | None = None  # (key, the head's weight in autocast's dtype)

    def __call__(self, module, args):
        if self.mask is None:  # generation, or any call outside a loss computation
            return None
        picked = args[0][:, :-1][self.mask].unsqueeze(0)
        if not self.fused:
            return (picked, *args[1:])
        self.hidden = picked[0]
        # the dtype the layer's matmul would run in here (accelerate's autocast covers the model's
        # forward only, not the loss computed after it)
        device = picked.device.type
        amp = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        self.dtype = torch.get_autocast_dtype(device) if amp else None
        return (picked[:, :0], *args[1:])  # no logits: the loss comes from self.hidden

    def weight(self) -> torch.Tensor:
        """The head's weight as ``_HeadLoss``'s matmul uses it: in autocast's dtype, cast once (the
        layer is frozen; cast again should its weight ever change). Its size (vocabulary x hidden,
        56 MB on SmolLM2) was cast at every chunk's peak anyway."""
        if self.dtype is None or self.dtype == self.head.dtype:
            return self.head
        key = (self.dtype, self.head.data_ptr(), self.head._version)
        if self._cast is None or self._cast[0] != key:
            self._cast = None  # the old copy goes before the new one is made
            self._cast = (key, self.head.detach().to(self.dtype))
        return self._cast[1]

    @contextlib.contextmanager
    def only(self, labels: torch.Tensor):
        self.mask = labels[:, 1:] != IGNORE
        self.fused = self.head is not None and torch.is_grad_enabled()  # evaluation returns logits
        try:
            yield
        finally:
            self.mask, self.fused, self.hidden = None, False, None


class _RowsOnlyHead(torch.nn.Linear):
    """A plain output layer while ``_HeadLoss`` computes the loss: the model's forward still calls
    it, with no rows (LabelledPositions); no rows need no matmul, and autocast would cast the whole
    weight for it."""

    def forward(self, x):
        if x.numel():
            return super().forward(x)
        device = x.device.type
        amp = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        return x.new_empty((*x.shape[:-1], self.out_features), dtype=torch.get_autocast_dtype(device) if amp else None)


class _Installed:
    """install's handle: ``remove()`` takes the hook off and gives the layer its class back."""

    def __init__(self, layer, handle, hook: LabelledPositions):
        self.layer, self.handle, self.hook = layer, handle, hook

    def remove(self) -> None:
        self.handle.remove()
        if type(self.layer) is _RowsOnlyHead:
            self.layer.__class__ = torch.nn.Linear
        self.hook._cast = None


def install(model) -> tuple[LabelledPositions, _Installed]:
    """Hook the (possibly PEFT-wrapped, possibly LoRA-adapted) output layer; returns (hook, handle)."""
    layer = model.get_output_embeddings()
    plain = (type(layer) is torch.nn.Linear and layer.bias is None and not layer.weight.requires_grad
             and getattr(model.config, "model_type", None) in HEAD_LOSS_MODELS)
    hook = LabelledPositions(layer.weight if plain else None)
    if plain:
        layer.__class__ = _RowsOnlyHead
    return hook, _Installed(layer, layer.register_forward_pre_hook(hook), hook)


def labelled_loss(model, hook: LabelledPositions, batch: dict, divide_by=None):
    """Summed cross-entropy of the trained tokens / ``divide_by`` (default: their count)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "lengths")}
    with hook.only(labels):
        outputs = model(**inputs)
        targets = labels[:, 1:][labels[:, 1:] != IGNORE]
        divide_by = divide_by if divide_by is not None else max(targets.numel(), 1)
        if hook.fused:
            return _HeadLoss.apply(hook.hidden, hook.weight(), targets, divide_by, hook.dtype), outputs
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss / divide_by, outputs


class _HeadLoss(torch.autograd.Function):
    """``F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum") / divide_by``
    (the matmul in ``dtype``: autocast's where it was on), with the gradient for ``hidden``
    computed in the forward pass, ``HEAD_LOSS_ELEMENTS`` logits at a time: autograd's arithmetic in
    autograd's order and dtypes (softmax - one-hot, scaled by 1 / divide_by in float32, cast to the
    matmul's dtype, times the weight), so only the [K, hidden] gradient is kept. Bit for bit under
    bf16 autocast; in float32 the matmul over fewer rows may sum in another order. Exact when the
    loss's gradient is 1 (``loss.backward()``); otherwise the gradient is scaled by it.
    Hand-written: torch has no fused linear cross-entropy; Liger-Kernel's runs on Triton (GPUs)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, divide_by, dtype):
        w = weight.to(dtype) if dtype is not None else weight  # autocast's cast (LabelledPositions.weight has made it)
        one = torch.ones((), dtype=torch.float32, device=hidden.device)
        scale = one / divide_by  # the gradient autograd's division hands the cross-entropy
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        rows = max(1, HEAD_LOSS_ELEMENTS // weight.shape[0])
        picked = []
        device = hidden.device.type
        off = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else contextlib.nullcontext()
        with off:  # the dtypes are the ones above, whatever the caller's autocast
            for a in range(0, hidden.shape[0], rows):
                logits = F.linear(hidden[a:a + rows].to(w.dtype), w).float()
                logp = torch.log_softmax(logits, -1)
                del logits
                t = targets[a:a + rows, None]
                picked.append(logp.gather(1, t))
                if grad is not None:  # log_softmax's backward of nll's: exp(logp) * s - s at the target
                    g = logp.exp_().mul_(scale)
                    g.scatter_(1, t, g.gather(1, t) - scale)
                    grad[a:a + rows] = g.to(w.dtype).mm(w).to(hidden.dtype)
        total = -torch.cat(picked).sum() if picked else hidden.new_zeros((), dtype=torch.float32)
        ctx.save_for_backward(grad)
        return total / divide_by

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None
        return (grad if bool(grad_loss == 1) else grad * grad_loss.to(grad.dtype)), None, None, None, None


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
