"""A CPU training step that keeps less for the backward pass, with bit-identical results.

- LoRA dropout: peft computes ``lora_B(lora_A(dropout(x)))``. On the CPU ``F.dropout`` draws a
  float mask and multiplies, so autograd keeps that mask (for dropout's backward) and the
  dropped copy of ``x`` (for ``lora_A``'s weight gradient): about half of all activation memory
  of an all-linear LoRA step in float32 (SmolLM2-135M, 512 tokens: 580 of 1,090 MB). Folded
  into ``lora_A``, the step keeps ``x`` itself (one copy shared by q/k/v and by gate/up, which
  read the same input) and a boolean mask, and rebuilds the dropped copy in the backward pass.
  The mask is drawn the same way from the same generator as ``F.dropout`` draws it.
  peft casts a layer's input to ``lora_A``'s dtype first (float32): under bf16 autocast the
  inputs of o_proj and down_proj are bf16, so each was copied to float32 and kept so. The folded
  adapters take the bf16 input instead (peft's own switch, ``cast_input_dtype_enabled``) and keep
  it as it is; the float32 copy exists only while the dropout's arithmetic runs, which stays in
  float32 (rounding ``x * scale`` once to bf16 is not what peft's path rounds): the same values.
- Frozen linear weights under bf16 autocast: autocast casts each float32 weight to bf16 for
  every matmul, and autograd keeps each cast for the backward pass (as large as the model's
  linear layers, in bf16, alive until the backward pass reaches the layer). The frozen weights
  never change, so they are stored in bf16 once: the matmuls see the same bf16 values.
- Masks of checkpointed layers: gradient checkpointing replays a layer's forward in the backward
  pass with the random state restored, so the replay draws the same dropout masks again (~10% of
  a step on the CPU). A layer marked by ``keep_masks`` keeps each mask from its forward to its
  replay instead (one byte a value: 2.4 MB a layer per 512 tokens on SmolLM2-135M); the replay
  draws anew where none is waiting, the same mask either way.

Imported only when training starts (torch at module level).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ftctl.api import off_the_checkpoint


class _DroppedLinear(torch.autograd.Function):
    """``F.linear(F.dropout(x, p), weight)`` saving x and a bool mask; the backward pass computes
    what autograd computes for the two ops, in the same order and dtypes (autocast included)."""

    @staticmethod
    def forward(ctx, x, weight, p: float, owner=None):
        mask = owner.kept_mask if owner is not None and _replaying() else None
        if mask is None or mask.shape != x.shape:
            # bernoulli_ draws from the same stream whatever the dtype: the mask F.dropout would draw
            mask = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - p)
        if owner is not None:  # kept for the replay (the forward), let go of by it (the replay)
            owner.kept_mask = None if _replaying() else mask
        # F.dropout's kept value, rounded as it rounds it in the dtype peft casts the input to
        scale = torch.ones((), dtype=weight.dtype, device=x.device).div_(1 - p)
        device = x.device.type
        amp = torch.amp.is_autocast_available(device)  # not on "meta" (ftctl.lib.memory's prediction)
        ctx.autocast = (device, amp and torch.is_autocast_enabled(device), amp and torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, mask, weight, scale)
        return F.linear(_dropped(x, scale, mask), weight)

    @staticmethod
    def backward(ctx, grad):
        x, mask, weight, scale = ctx.saved_tensors
        device, autocast, dtype = ctx.autocast
        grad_x = grad_w = None
        with torch.autocast(device, dtype, enabled=autocast) if autocast else contextlib.nullcontext():
            if ctx.needs_input_grad[0]:
                # the matmul's result is new: dropout's backward in place, then peft's cast's backward
                grad_x = grad.matmul(weight).to(weight.dtype).mul_(scale).mul_(mask).to(x.dtype)
            if ctx.needs_input_grad[1]:
                dropped = _dropped(x, scale, mask).reshape(-1, x.shape[-1])
                grad_w = grad.reshape(-1, grad.shape[-1]).t().mm(dropped).to(weight.dtype)
        return grad_x, grad_w, None, None


def _dropped(x, scale, mask):
    """``F.dropout(x.to(scale.dtype))`` with this mask: peft's cast, then ``x * scale * mask`` in
    that dtype; in place where the tensor is new (one pass fewer of allocation, the same values)."""
    y = x.to(scale.dtype)
    return (y * scale if y is x else y.mul_(scale)).mul_(mask)


class DroppedLoraA(torch.nn.Linear):
    """A LoRA ``lora_A`` with its adapter's dropout folded in (same parameters, same state dict)."""

    dropout_p: float
    keep_mask = False  # in a checkpointed layer: keep the mask for the replay (keep_masks)
    kept_mask: torch.Tensor | None = None

    def forward(self, x):
        if self.training and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _DroppedLinear.apply(x, self.weight, self.dropout_p, self if self.keep_mask else None)
        # peft's input cast, which fold_dropout moved here
        return F.linear(F.dropout(x.to(self.weight.dtype), self.dropout_p, self.training), self.weight, self.bias)


def fold_dropout(model) -> int:
    """Move every plain LoRA adapter's dropout into its ``lora_A``; returns how many were folded.
    Layers peft computes another way (DoRA and other variants, biased or non-Linear ``lora_A``)
    keep peft's own dropout. A layer whose adapters are all folded leaves the cast of its input
    to them (peft's ``cast_input_dtype_enabled``; older peft versions cast anyway: the same)."""
    folded = 0
    for module in model.modules():
        drops, lora_a = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not isinstance(drops, torch.nn.ModuleDict) or not isinstance(lora_a, torch.nn.ModuleDict):
            continue
        variants = getattr(module, "lora_variant", {}) or {}
        for name, drop in list(drops.items()):
            a = lora_a[name] if name in lora_a else None
            if (type(drop) is not torch.nn.Dropout or drop.p <= 0 or type(a) is not torch.nn.Linear
                    or a.bias is not None or name in variants):
                continue
            a.__class__ = DroppedLoraA
            a.dropout_p = drop.p
            drops[name] = torch.nn.Identity()
            folded += 1
        if lora_a and all(type(a) is DroppedLoraA for a in lora_a.values()):
            module.cast_input_dtype_enabled = False
    return folded


def _replaying() -> bool:
    """Whether this forward runs inside a backward pass: gradient checkpointing's replay."""
    task = getattr(torch._C, "_current_graph_task_id", None)  # no such call: always draw
    return task is not None and task() != -1


def keep_masks(model) -> int:
    """Mark the folded dropouts of the checkpointed decoder layers (transformers' per-layer
    ``gradient_checkpointing`` flags, as the trainer has set them) to keep their masks for the
    replay; returns how many."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers < 4.52: replays draw their masks again
        return 0
    marked = 0
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            for m in layer.modules():
                if isinstance(m, DroppedLoraA):
                    m.keep_mask = bool(layer.gradient_checkpointing)
                    m.kept_mask = None
                    marked += m.keep_mask
    return marked


def bf16_frozen_linears(model) -> int:
    """Store the frozen weights of the decoder's linear layers in bf16 (for a run under bf16
    autocast, whose matmuls use them in bf16 anyway); returns how many. The output layer keeps
    its dtype: it may share its weight with the input embeddings, which autocast does not cast."""
    out_layer = model.get_output_embeddings()
    done = 0
    for module in model.modules():
        if (type(module) is torch.nn.Linear and module is not out_layer and module.weight.dtype == torch.float32
                and not any(p.requires_grad for p in module.parameters())):
            module.to(torch.bfloat16)
            done += 1
    if done:  # the float32 weights were views into the mapped checkpoint file: let go of it
        off_the_checkpoint(model)
    return done
