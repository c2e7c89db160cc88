"""The CPU step's memory cuts (ftctl_plugins/trainers/lean.py) change nothing in the results: the
same loss and the same gradients, bit for bit, as peft's own dropout and float32 weights, with
and without (partial) gradient checkpointing, in float32 and under bf16 autocast. And the cuts
are real: less is kept for the backward pass, the checkpoint file is let go. The loss computed
without keeping the logits (loss.py's _HeadLoss) gives the same loss and gradients too."""

from __future__ import annotations

import pytest

from tests.fixtures_models import make_tiny


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory, smollm2_base):
    return make_tiny(tmp_path_factory.mktemp("lean"), smollm2_base.path, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=4)


def lora_model(path):
    """The tiny base with all-linear LoRA (dropout 0.1), the adapter's weights from seed 0."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.use_cache = False
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                                       target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    return model


def step(path, monkeypatch, *, lean: bool, amp: bool, checkpointed: int):
    """Loss, flat LoRA gradients and bytes kept for backward of one forward/backward."""
    import torch

    from ftctl_plugins.trainers.lean import DroppedLoraA, bf16_frozen_linears, fold_dropout, keep_masks

    model = lora_model(path)
    model.enable_input_require_grads()
    if lean:
        assert fold_dropout(model) == 4 * 7  # q k v o gate up down in each layer
        # peft no longer casts their inputs to float32 (o_proj's and down_proj's are bf16 under autocast)
        assert sum(getattr(m, "cast_input_dtype_enabled", True) is False for m in model.modules()) == 4 * 7
        if amp:
            assert bf16_frozen_linears(model) == 4 * 7
    if checkpointed:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for i, layer in enumerate(model.get_base_model().model.layers):
            layer.gradient_checkpointing = i < checkpointed
        if lean:  # the checkpointed layers' replays take the masks their forward drew
            assert keep_masks(model) == 7 * checkpointed
    draws = []
    bernoulli = torch.Tensor.bernoulli_
    monkeypatch.setattr(torch.Tensor, "bernoulli_", lambda t, *a, **k: draws.append(t.shape) or bernoulli(t, *a, **k))
    ids = torch.randint(0, 500, (1, 96), generator=torch.Generator().manual_seed(1))
    positions = torch.cat([torch.arange(40), torch.arange(56)]).unsqueeze(0)  # two packed conversations
    kept = []
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept.append((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        return t

    torch.manual_seed(2)  # the dropout masks
    with torch.autocast("cpu", torch.bfloat16, enabled=amp), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, position_ids=positions, labels=ids).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    if lean:  # one draw per adapter, replays included; no mask is held after the backward pass
        assert len(draws) == 4 * 7
        assert all(m.kept_mask is None for m in model.modules() if isinstance(m, DroppedLoraA))
    return loss.item(), grads, sum(dict(kept).values())  # each storage once


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("checkpointed", [0, 2, 4], ids=["none", "half", "all"])
def test_same_loss_and_gradients_bit_for_bit(four_layers, amp, checkpointed, monkeypatch):
    import torch

    loss, grads, kept = step(four_layers, monkeypatch, lean=False, amp=amp, checkpointed=checkpointed)
    lean_loss, lean_grads, lean_kept = step(four_layers, monkeypatch, lean=True, amp=amp, checkpointed=checkpointed)
    assert lean_loss == loss
    assert grads.abs().sum() > 0 and torch.equal(lean_grads, grads)
    # each layer that keeps its activations keeps at least 16 bytes less a token per hidden unit
    # (measured: 40 in float32; the float mask and the dropped copies of 4-8 inputs gone)
    assert kept - lean_kept >= (4 - checkpointed) * 96 * 64 * 16


def test_bf16_weights_let_go_of_the_checkpoint_file(four_layers):
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl_plugins.trainers.lean import bf16_frozen_linears

    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(four_layers, dtype=torch.float32),
                                peft.LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bf16_frozen_linears(model)
    mapped = [line for line in open("/proc/self/maps") if str(four_layers) in line]
    assert not mapped
    for n, p in model.named_parameters():
        if p.dtype == torch.bfloat16:  # the frozen decoder linears: the values autocast would cast to
            assert not p.requires_grad and torch.equal(p, before[n].to(torch.bfloat16))
        else:
            assert torch.equal(p, before[n])
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    assert model.get_output_embeddings().weight.dtype == torch.float32


def test_checkpointing_takes_a_share_of_the_layers(tmp_path, four_layers):
    import pydantic
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.kinds import Context
    from ftctl.lib.device import Device
    from ftctl_plugins.trainers.callbacks import PartialCheckpointing
    from ftctl_plugins.trainers.lora import LoraConfig, LoraTrainer

    def share(v):
        return LoraTrainer(LoraConfig(gradient_checkpointing=v), Context(tmp_path, "m", tmp_path, log=print)) \
            .checkpointing(Device("cpu"))

    assert [share(v) for v in (None, True, False, 1, 0, 0.5, "0.25", "true", "off")] == \
        [0.6, 1.0, 0.0, 1.0, 0.0, 0.5, 0.25, 1.0, 0.0]  # unset, with no base to plan from: the floor
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(pydantic.ValidationError):
            LoraConfig(gradient_checkpointing=bad)

    model = AutoModelForCausalLM.from_pretrained(four_layers, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    PartialCheckpointing(0.5).on_train_begin(None, None, None, model=model)
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, True, False, False]


def head_step(path, *, fused: bool, amp: bool):
    """Loss and flat LoRA gradients of labelled_loss on two micro-batch chunks, the model's forward
    under autocast as accelerate runs it (the loss after it is not)."""
    import torch

    from ftctl_plugins.trainers.lean import bf16_frozen_linears, fold_dropout
    from ftctl_plugins.trainers.loss import install, labelled_loss

    model = lora_model(path)
    fold_dropout(model)
    if amp:
        bf16_frozen_linears(model)
        model.forward = torch.autocast("cpu", torch.bfloat16)(model.forward)
    hook, handle = install(model)
    assert hook.head is not None
    if not fused:
        hook.head = None  # the logits path
    gen = torch.Generator().manual_seed(1)
    losses, casts = [], []
    torch.manual_seed(2)  # the dropout masks
    for rows in (2, 1):  # 300 and 150 trained tokens: several chunks of _HeadLoss's rows
        ids = torch.randint(0, 500, (rows, 200), generator=gen)
        labels = ids.clone()
        labels[:, :50] = -100
        loss, out = labelled_loss(model, hook, {"input_ids": ids, "labels": labels}, divide_by=torch.tensor(450))
        assert out.logits.shape[:2] == (1, 0 if fused else rows * 150)  # logits kept by the logits path only
        if fused and amp:  # the output layer's weight cast to bf16 once for all chunks
            casts.append(hook.weight())
            assert casts[0] is casts[-1] and casts[0].dtype == torch.bfloat16
        loss.backward()
        losses.append(loss.item())
    handle.remove()
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    return losses, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_loss_without_logits_has_the_same_gradients(four_layers, amp, monkeypatch):
    import torch

    from ftctl_plugins.trainers import loss

    monkeypatch.setattr(loss, "HEAD_LOSS_ELEMENTS", 100 * 49152)  # 100 rows at a time (SmolLM2's vocabulary)
    losses, grads = head_step(four_layers, fused=False, amp=amp)
    fused_losses, fused_grads = head_step(four_layers, fused=True, amp=amp)
    assert grads.abs().sum() > 0
    if amp:  # bit for bit
        assert torch.equal(fused_grads, grads)
    else:  # float32 matmuls over fewer rows at a time sum the vocabulary in another order
        torch.testing.assert_close(fused_grads, grads, rtol=1e-4, atol=1e-9)
    # the summed loss adds the same terms in another order
    torch.testing.assert_close(torch.tensor(fused_losses), torch.tensor(losses), rtol=1e-6, atol=0)
