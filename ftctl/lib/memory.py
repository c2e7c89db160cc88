"""Peak memory of a LoRA/QLoRA run, predicted from the base's config alone: no weight is loaded.

The model is built on the meta device (accelerate's ``init_empty_weights`` around transformers'
``from_config``): every parameter has its shape and dtype and no storage, so a 7B model costs
nothing. The parts of the peak:

- weights: each parameter at the dtype it is stored in for the run (after the trainer's
  ``prepare``: under bf16 autocast on the CPU the frozen linear weights are stored in bf16); under
  QLoRA the linear layers bitsandbytes quantizes (every ``nn.Linear`` but the output layer) take
  4 bits a weight plus the NF4 block constants, and peft's ``prepare_model_for_kbit_training`` keeps the rest in float32;
- the adapter: its parameters in float32, their gradients and AdamW's two moments (16 bytes each);
- activations: what autograd keeps for the backward pass, counted by running the LoRA-wrapped
  meta model forward on one chunk of tokens under ``saved_tensors_hooks`` (the real forward, so
  every architecture and every LoRA dropout is counted as it is, not from a formula; the trainer's
  own changes to the model come in as ``prepare``). With gradient checkpointing only each
  checkpointed layer's input is kept (the others keep everything), plus one layer's activations
  while it is recomputed. Under CPU autocast (``RunShape.autocast``) the forward applies
  autocast's casts itself (autocast does not reach meta tensors), so matmuls keep bf16 inputs
  as they do in the run. The logits are counted at the trained positions only, as the trainer
  computes them (ftctl_plugins/trainers/loss.py);
- a fixed overhead: on CUDA the context and the caching allocator's slack, on the CPU the
  libraries the run imports, measured in this process (their resident size differs between
  machines), and what a run adds to them (docs/train.md).

Why hand-written: no library predicts a fine-tuning run's peak from a config (accelerate's
``estimate-memory`` counts weights only, for inference).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from ftctl.kinds import MemoryEstimate
from ftctl.lib.device import Device

GIB = 2**30
# bytes of torch's CUDA context and kernels (outside the allocator's count) and the allocator's
# rounding and fragmentation (a share of what is allocated): the usual figures for a training step
CUDA_CONTEXT = int(0.9 * GIB)
CUDA_SLACK = 0.10
# The `ftctl train` process on the CPU, less the tensors: the libraries it imports (torch,
# transformers with its Trainer, peft, and bitsandbytes through peft where installed), measured in
# this process where it can be, and what the run adds beyond them (tokenizer, data, the kernels'
# buffers; more with bitsandbytes' 4-bit kernels): peak RSS less the tensors with
# benchmarks/memory.py, docs/train.md "Memory you can plan". The libraries are measured rather than
# set because their size is the machine's: a constant for libraries and run together, set on an
# AVX2 EPYC (560 MB), was 110-170 MB low on every row on an AVX-512 Xeon with the same package
# pins, where the libraries alone take ~630 MB. CPU_RUNTIME stands in where nothing can be measured.
CPU_RUNTIME = 630 * 2**20
CPU_RUN = 70 * 2**20
CPU_BITSANDBYTES = 80 * 2**20
# glibc's allocator keeps freed blocks: peak RSS runs above the tensors alive at the peak
CPU_SLACK = 0.10
NF4_BLOCK = 64  # bitsandbytes' 4-bit block size: one absmax per 64 weights


@dataclass(frozen=True)
class RunShape:
    """The training settings that decide memory."""

    lora_r: int
    target_modules: list[str] | str | None  # as peft takes them ("all-linear", names, None)
    qlora: bool
    load_dtype: str  # float32 | bfloat16 | float16 (QLoRA: the compute dtype)
    tokens: int  # tokens in one forward/backward chunk (the trainer chunks micro-batches by max_length)
    trained_share: float = 1.0  # share of the tokens that carry loss (logits are computed there only)
    gradient_checkpointing: float = 0.0  # the share of decoder layers checkpointed (True: all)
    double_quant: bool = True
    # model types whose loss the trainer computes a few rows of logits at a time (a frozen plain
    # output layer): no [trained tokens, vocabulary] logits are kept
    head_loss_models: frozenset = frozenset()
    head_loss_elements: int = 2**22  # logits computed at once there
    # the dtype CPU autocast runs matmuls in (bfloat16), where the run has autocast over float32
    # weights; None: the forward runs in the weights' dtype
    autocast: str | None = None


def read_config(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def predict(config, shape: RunShape, device: Device, prepare=None) -> MemoryEstimate:
    """The predicted peak of a run of ``shape`` on ``device`` for a model with this HF config.
    ``prepare``: what the trainer does to the LoRA-wrapped model before training (called on the
    meta model, so what it changes in the saved activations is counted)."""
    m = _measure(config, shape, prepare)
    return _estimate(m, shape, device, checkpointed_layers(shape.gradient_checkpointing, m.layers))


def least_checkpointing(config, shape: RunShape, device: Device, prepare=None, *, floor: float,
                        room: float) -> float:
    """The smallest share of decoder layers to checkpoint, at least ``floor``, whose predicted peak
    fits in ``room`` (a fraction) of the device's memory; all layers (1.0) where none does or the
    layers are unknown. One meta forward, whatever the number of layers tried."""
    m = _measure(config, shape, prepare)
    if not m.layers:
        return 1.0
    for checkpointed in range(checkpointed_layers(floor, m.layers), m.layers):
        if device.total_bytes <= 0 or _estimate(m, shape, device, checkpointed).total <= room * device.total_bytes:
            return checkpointed / m.layers  # exact: checkpointed_layers() gives back this count
    return 1.0


@dataclass(frozen=True)
class _Measured:
    """What one meta forward of a run's model gives (bytes), whatever its layers checkpointed."""

    weights: int
    adapter: int  # parameters
    body: int  # saved for backward by the decoder body
    head: int  # by the output layer and loss
    layers: int
    largest: int  # the largest single saved tensor
    masks: int  # the body's boolean masks
    hidden: int  # one layer's input


def _measure(config, shape: RunShape, prepare) -> _Measured:
    import torch

    dtype = getattr(torch, shape.load_dtype)
    act_dtype = dtype  # QLoRA: the compute dtype, which 4-bit layers dequantize to
    # building the model draws from torch's CPU generator: a prediction inside a seeded run (the
    # trainer plans its checkpointing after set_seed) must leave the run's adapter and data as they were
    with _quiet(), torch.random.fork_rng(devices=[]):
        model = _meta_model(config, dtype)
        quantized = _quantized_linears(model) if shape.qlora else set()
        peft_model = _with_lora(model, shape)
        if prepare is not None:
            prepare(peft_model)
        # after prepare: the trainer may store frozen weights in another dtype (lean.py under autocast)
        weights = _weight_bytes(peft_model.get_base_model(), shape, quantized)
        adapter = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        with _autocast(shape.autocast):
            body, head, layers, largest, masks = _saved_bytes(peft_model, shape, act_dtype)
    return _Measured(weights, adapter, body, head, layers, largest, masks,
                     hidden=config.hidden_size * shape.tokens * act_dtype.itemsize)


def _estimate(m: _Measured, shape: RunShape, device: Device, checkpointed: int) -> MemoryEstimate:
    if checkpointed:
        per_layer = m.body / m.layers
        # checkpointed layers keep their input (+ the one being recomputed) and the trainer's
        # dropout masks for the replay (ftctl_plugins/trainers/lean.py), the others everything
        activations = (checkpointed * (m.hidden + m.masks / m.layers) + per_layer
                       + (m.layers - checkpointed) * per_layer)
    else:
        activations = m.body
    activations += m.head + m.largest  # the logits' part, and the biggest tensor's gradient in flight
    parts = {"weights": m.weights, "adapter_and_optimizer": 16 * m.adapter, "activations": int(activations)}
    tensors = sum(parts.values())
    if device.is_cuda:
        parts["cuda_overhead"] = CUDA_CONTEXT + int(CUDA_SLACK * tensors)
    else:
        parts["runtime"] = (cpu_libraries() + CPU_RUN + (CPU_BITSANDBYTES if shape.qlora else 0)
                            + int(CPU_SLACK * tensors))
    notes = [f"{shape.tokens} tokens per forward pass, {shape.trained_share:.0%} of them trained",
             _checkpointing_note(checkpointed, m.layers),
             f"weights {'4-bit NF4 (linear layers)' if shape.qlora else shape.load_dtype}"]
    return MemoryEstimate(device=str(device), device_bytes=device.total_bytes, parts=parts,
                          adapter_params=m.adapter, notes=notes, advice=advice(shape))


def cpu_libraries() -> int:
    """Resident bytes of this process with the libraries a CPU run imports: measured here (Linux),
    CPU_RUNTIME elsewhere. Called before any model loads (the preview, train's check), the process
    holds little else."""
    import peft  # noqa: F401  (bitsandbytes too, where installed)
    import transformers

    transformers.Trainer  # noqa: B018  (imported on first use; the trainer runs through it)
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return CPU_RUNTIME
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return kib * 1024 if kib else CPU_RUNTIME


def checkpointed_layers(share: float, layers: int) -> int:
    """How many decoder layers (the first ones) a checkpointing share covers."""
    return min(layers, math.ceil(share * layers - 1e-9)) if share > 0 else 0


def _checkpointing_note(checkpointed: int, layers: int) -> str:
    if not checkpointed:
        return "no gradient checkpointing"
    return "gradient checkpointing" + ("" if checkpointed == layers else f" ({checkpointed} of {layers} layers)")


# --- the parts ----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def _meta_model(config, dtype):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = type(config).from_dict(config.to_dict())  # a copy: the caller's config stays as it was
    config.use_cache = False
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.train()
    return model


def _quantized_linears(model) -> set[int]:
    """The linear layers (ids) bitsandbytes replaces with 4-bit ones: all but the output layer."""
    import torch

    out_layer = model.get_output_embeddings()
    return {id(m) for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not out_layer}


def _weight_bytes(model, shape: RunShape, quantized: set[int]) -> int:
    """The frozen weights, each at the dtype it is stored in (the adapter is counted apart)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen or p.requires_grad:
                continue  # tied embeddings count once; the adapter apart
            seen.add(id(p))
            n = p.numel()
            if id(module) in quantized and pname == "weight":
                blocks = -(-n // NF4_BLOCK)
                # 4 bits a weight; absmax per block: 8-bit + a float32 per 256 blocks with double quant
                total += n // 2 + (blocks + 4 * -(-blocks // 256) if shape.double_quant else 4 * blocks)
            else:
                # prepare_model_for_kbit_training keeps what is not 4-bit in float32
                total += n * (4 if shape.qlora else p.element_size())
    return total


def _with_lora(model, shape: RunShape):
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(r=shape.lora_r, lora_alpha=2 * shape.lora_r,
                                                      lora_dropout=0.05, target_modules=shape.target_modules,
                                                      task_type="CAUSAL_LM"))


def _saved_bytes(peft_model, shape: RunShape, act_dtype) -> tuple[int, int, int, int, int]:
    """(bytes saved for backward by the decoder body, by the output layer and loss, number of
    layers, the largest single saved tensor, the body's boolean masks): one forward of
    ``shape.tokens`` tokens on meta."""
    import torch
    import torch.nn.functional as F

    def storage(t) -> int:  # views share their base's storage: count each storage once
        return t.untyped_storage()._cdata

    params = {storage(p) for p in peft_model.parameters()}
    seen: set[int] = set()
    counted = {"bytes": 0, "largest": 0, "bool": 0}

    def pack(t):
        key = storage(t)
        if key not in params and key not in seen:
            seen.add(key)
            n = t.untyped_storage().nbytes()
            counted["bytes"] += n
            counted["largest"] = max(counted["largest"], n)
            counted["bool"] += n if t.dtype == torch.bool else 0
        return t

    model = peft_model.get_base_model()
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    layers = getattr(model.config, "num_hidden_layers", 0)
    ids = torch.zeros((1, shape.tokens), dtype=torch.long, device="meta")
    trained = max(1, round(shape.tokens * shape.trained_share))
    # transformers looks for packed sequences in the position ids with a data-dependent check
    # (``.all()``), which a meta tensor cannot answer; the mask it would build is one boolean
    # [T, T] tensor shared by every layer, nothing next to the activations. And on meta, SDPA
    # takes its math path, which keeps the [heads, T, T] attention weights: the fused kernels a
    # real run takes (CPU flash, CUDA flash / memory-efficient) keep q, k, v, the output and a
    # log-sum-exp per row instead, which the CPU flash kernel's meta function gives exactly.
    from unittest import mock

    with mock.patch("transformers.masking_utils.find_packed_sequence_indices", lambda *a, **k: None), \
            mock.patch("torch.nn.functional.scaled_dot_product_attention", _fused_attention), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        embeds = body.get_input_embeddings()(ids).to(act_dtype).requires_grad_(True)
        hidden = body(inputs_embeds=embeds, use_cache=False).last_hidden_state
        body_bytes, masks = counted["bytes"], counted["bool"]
        if not _head_loss(model, head, shape):
            # the trainer's loss: logits at the trained positions only, cross-entropy in float32
            logits = head(hidden[:, :trained].reshape(trained, -1))
            F.cross_entropy(logits.float(), torch.zeros(trained, dtype=torch.long, device="meta"), reduction="sum")
    vocab = model.config.vocab_size
    if _head_loss(model, head, shape):
        # the hidden states' gradient is kept; one chunk of logits, its float32 log-softmax and
        # its gradient exist while it is computed
        rows = min(trained, max(1, shape.head_loss_elements // vocab))
        head_bytes = trained * hidden.shape[-1] * act_dtype.itemsize + rows * vocab * (4 + 4 + act_dtype.itemsize)
    else:
        head_bytes = counted["bytes"] - body_bytes + trained * vocab * 4  # + the logits' gradient
    return body_bytes, head_bytes, layers, counted["largest"], masks


def _head_loss(model, head, shape: RunShape) -> bool:
    """Whether the trainer computes this model's loss without keeping the logits (its output
    layer plain and frozen: not adapted by LoRA)."""
    import torch

    return (getattr(model.config, "model_type", None) in shape.head_loss_models and type(head) is torch.nn.Linear
            and head.bias is None and not head.weight.requires_grad)


@contextlib.contextmanager
def _autocast(dtype_name: str | None):
    """CPU autocast's casts, on meta: autocast has no dispatch key for meta tensors (``torch.autocast
    ("cpu")`` leaves a meta forward in float32), so this mode applies its policy at the same
    place, above autograd (which then keeps the cast copies, as it keeps autocast's): matmuls and
    attention in ``dtype_name``, the losses in float32 (torch's CPU autocast lists; the ops a
    decoder's forward runs). Other ops run in their inputs' dtypes, as under autocast. Hand-written:
    torch has no autocast for meta tensors."""
    if dtype_name is None:
        yield
        return
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    low = getattr(torch, dtype_name)
    lower = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm,
             torch.bmm, torch.Tensor.bmm, torch.addmm, torch.baddbmm, torch.einsum, F.scaled_dot_product_attention,
             torch.ops.aten._scaled_dot_product_flash_attention_for_cpu}  # as _fused_attention calls it
    fp32 = {F.cross_entropy, F.nll_loss, F.mse_loss, F.binary_cross_entropy_with_logits, F.kl_div}

    def cast(x, to):
        return x.to(to) if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != to else x

    class MetaAutocast(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            to = low if func in lower else torch.float32 if func in fp32 else None
            if to is not None:  # the mode is off inside this call: the casts are plain ops
                args = tuple(cast(a, to) for a in args)
                kwargs = {k: cast(v, to) for k, v in kwargs.items()}
            return func(*args, **kwargs)

    with MetaAutocast():
        yield


def _fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                     enable_gqa=False):
    import torch

    if key.shape[-3] != query.shape[-3]:  # grouped-query attention: the kernel sees every head
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], -3)
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], -3)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal or attn_mask is None, attn_mask=attn_mask, scale=scale)[0]


# --- reading an estimate --------------------------------------------------------------------


def advice(shape: RunShape) -> list[str]:
    """What to change, cheapest first, for a run predicted not to fit."""
    out = []
    if shape.gradient_checkpointing < 1:
        out.append("train.lora.gradient_checkpointing: true")
    if not shape.qlora:
        out.append("train.lora.qlora: true (4-bit base, `pip install 'ftctl[qlora]'`)")
    out.append(f"a smaller train.lora.max_length (now {shape.tokens})")
    if shape.load_dtype == "float32":
        out.append("train.lora.precision: bf16 on a GPU that has it")
    return out
