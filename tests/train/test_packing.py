"""Packing changes rows, never the optimisation; the loss is per trained token of the whole step."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import configure, examples, write_jsonl
from tests.train.test_train import run_plugin

# dropout 0: the runs below must differ only in how conversations are laid out in rows
SAME = {"epochs": 1, "max_steps": None, "batch_size": 4, "dropout": 0.0, "learning_rate": 5e-3, "warmup": 2,
        "scheduler": "cosine", "checkpoint_every": 1000}


def curve(result) -> list[dict]:
    history = json.loads((result.adapter_dir.parent / "log_history.json").read_text())
    return [h for h in history if "loss" in h]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base):
    """The same data and seed trained packed, unpacked, and with batch 2 x accumulation 2."""
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace

    out = tmp_path_factory.mktemp("runs")
    init(out / "ws", model="assistant")
    ws = Workspace(out / "ws")
    configure(ws, tiny_base)
    write_jsonl(ws.data_dir("assistant") / "train.jsonl", examples(30))
    return {"packed": run_plugin(ws, out / "packed", packing=True, **SAME),
            "unpacked": run_plugin(ws, out / "unpacked", packing=False, **SAME),
            # recomputing activations must not change the maths either (the output-layer hook included)
            "accumulated": run_plugin(ws, out / "accumulated", packing=True, gradient_checkpointing=True,
                                      **{**SAME, "batch_size": 2, "gradient_accumulation": 2}), "ws": ws}


def test_packed_and_unpacked_take_the_same_steps_schedule_and_losses(runs):
    packed, unpacked = runs["packed"], runs["unpacked"]
    # 30 conversations, 4 per step: 8 steps an epoch, whatever the rows look like
    assert packed.steps == unpacked.steps == 8
    assert packed.data["rows_per_step"] < unpacked.data["rows_per_step"] == 3.75  # packing did pack
    assert packed.tokens == unpacked.tokens  # the same conversations were seen
    a, b = curve(packed), curve(unpacked)
    assert [h["step"] for h in a] == [h["step"] for h in b] == list(range(1, 9))
    assert [h["learning_rate"] for h in a] == [h["learning_rate"] for h in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-3, abs=1e-3)
    assert a[-1]["loss"] < a[0]["loss"]  # and it learned


def test_the_plan_predicts_the_steps_taken(runs, tiny_base):
    from ftctl import plugins
    from ftctl.lib.basemodel import resolve_base

    ws = runs["ws"]
    for name, over in [("packed", {"packing": True}), ("accumulated", {"batch_size": 2, "gradient_accumulation": 2})]:
        raw = {**ws.model().train.plugin_config("lora"), **SAME, **over}
        trainer = plugins.build("trainer", "lora", raw, ws.context(log=lambda _m: None), key="train.lora")
        plan = trainer.plan(resolve_base(str(tiny_base)), ws.data_dir("assistant") / "train.jsonl")
        assert plan.optimizer_steps == runs[name].steps == 8
        assert plan.tokens_per_step * plan.optimizer_steps == pytest.approx(runs[name].tokens, rel=0.1)


def test_gradient_accumulation_gives_the_same_steps_as_a_bigger_batch(runs):
    # per trained token of the whole step: 2 micro-batches of 2 weigh like one batch of 4
    accumulated, packed = runs["accumulated"], runs["packed"]
    assert accumulated.steps == packed.steps
    for x, y in zip(curve(accumulated), curve(packed)):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-3, abs=1e-3)


# --- the loss itself ------------------------------------------------------------------------


def lora_model(tiny_base, targets):
    import peft
    import torch

    from ftctl.lib.basemodel import load_model, resolve_base

    torch.manual_seed(0)
    model = load_model(resolve_base(str(tiny_base)))
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                       target_modules=targets, init_lora_weights=False))
    return model


def batch(tiny_base, pack_to):
    from transformers import AutoTokenizer

    from ftctl.lib.chat_format import Collator, encode, ensure_pad

    tok = AutoTokenizer.from_pretrained(tiny_base)
    pad = ensure_pad(tok)
    rows = [encode(tok, ex["messages"]) for ex in examples(8)]
    return Collator(pad, pack_to=pack_to)([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])


@pytest.mark.parametrize("targets, pack_to", [(["q_proj", "v_proj"], None), (["q_proj", "lm_head"], 256)],
                         ids=["lora-unpacked", "lora_lm_head-packed"])
def test_labelled_positions_loss_equals_the_full_loss(tiny_base, targets, pack_to):
    import torch

    from ftctl.lib.chat_format import model_inputs
    from ftctl_plugins.trainers.loss import chunks, install, labelled_loss

    model = lora_model(tiny_base, targets)
    b = batch(tiny_base, pack_to)
    full = model(**model_inputs(b), labels=b["labels"]).loss  # transformers: logits everywhere, mean
    full.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    hook, handle = install(model)
    loss, out = labelled_loss(model, hook, b)
    n = int((b["labels"][:, 1:] != -100).sum())
    if hook.head is None:  # an adapted output layer: logits only where there are labels
        assert out.logits.shape[:2] == (1, n)
    else:  # a frozen plain one: the loss comes from the hidden states, no logits are kept
        assert out.logits.shape[:2] == (1, 0)
    torch.testing.assert_close(loss, full, atol=1e-5, rtol=0)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, full_grads[name], atol=1e-5, rtol=1e-4)
    model.zero_grad()

    # in chunks of rows (bounded activation memory), normalised by the whole batch: the same loss
    parts = chunks(b, budget=300)
    assert len(parts) > 1
    total = sum(labelled_loss(model, hook, part, divide_by=n)[0] for part in parts)
    torch.testing.assert_close(total, full, atol=1e-5, rtol=0)
    handle.remove()
    # outside a loss computation the output layer sees every position (generation is unchanged)
    assert model(**model_inputs(b)).logits.shape[:2] == b["input_ids"].shape
