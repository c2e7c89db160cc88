"""Chat rendering, assistant-only labels, EOS, padding and packing, on the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest

from ftctl.lib.chat_format import (IGNORE, ChatFormatError, Collator, check_template, encode, encode_all,
                               ensure_pad, histogram, mark_trained, model_inputs, pack, to_features)


@pytest.fixture(scope="module")
def tok(tiny_base):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_base)
    ensure_pad(t)
    return t


def trained_text(tok, enc):
    return tok.decode([t for t in enc.labels if t != IGNORE])


def test_loss_only_on_assistant_turns_and_eos_is_learned(tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
            {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]
    enc = encode(tok, msgs)
    assert trained_text(tok, enc) == "hello there<|im_end|>ciao<|im_end|>"
    assert enc.labels.count(tok.eos_token_id) == 2
    # the prompt (system, user turns, role headers) carries no loss
    assert "hi" not in trained_text(tok, enc) and "assistant" not in trained_text(tok, enc)
    assert mark_trained(tok, enc).count("[[") == 2


def test_pad_differs_from_eos_and_padding_never_masks_eos(tok):
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    short = encode(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    long = encode(tok, [{"role": "user", "content": "a longer question here"},
                        {"role": "assistant", "content": "a much longer answer than the other one"}])
    batch = Collator(tok.pad_token_id)([to_features([short]), to_features([long])])
    labels = batch["labels"][0].tolist()
    assert tok.eos_token_id in labels  # the short row's EOS survives padding
    assert labels[len(short):] == [IGNORE] * (len(long) - len(short))
    assert batch["input_ids"].shape == (2, len(long))


def test_no_assistant_turn_and_too_long_are_counted_not_lost(tok):
    convs = [[{"role": "user", "content": "only a question"}],
             [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 300}],
             [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}]]
    rows, report = encode_all(tok, convs, max_length=64)
    assert len(rows) == 1 and report.used == 1
    assert report.skipped == {"no_assistant_turn": 1, "longer_than_max_length": 1}


def test_tokenizer_without_chat_template_is_a_clear_error(tiny_base, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    for f in tiny_base.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, tmp_path / f.name)
    t = AutoTokenizer.from_pretrained(tmp_path)
    t.chat_template = None
    with pytest.raises(ChatFormatError) as e:
        check_template(t)
    assert "chat template" in e.value.message and "chat_template" in e.value.hint
    t.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" \
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    check_template(t)
    enc = encode(t, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "yes"}])
    assert t.decode([x for x in enc.labels if x != IGNORE]) == "yes<|im_end|>"


def test_template_without_eos_gets_eos_appended(tok):
    from copy import deepcopy

    t = deepcopy(tok)
    t.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}" \
                      "{% if add_generation_prompt %}[assistant] {% endif %}"
    enc = encode(t, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "yes"}])
    assert enc.labels[-1] == t.eos_token_id and enc.input_ids[-1] == t.eos_token_id


def test_packing_fits_rows_and_keeps_conversations_apart(tok, tiny_base):
    """A packed row gives each conversation exactly the logits it gets alone (block-diagonal mask)."""
    import torch
    from transformers import AutoModelForCausalLM

    convs = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "answer " * (i + 1)}]
             for i in range(5)]
    rows, _ = encode_all(tok, convs, max_length=128)
    bins = pack(rows, 128)
    assert sum(len(b) for b in bins) == 5 and all(sum(len(r) for r in b) <= 128 for b in bins)
    assert len(bins) < 5
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    collator = Collator(tok.pad_token_id)
    packed = collator([to_features(bins[0])])
    with torch.no_grad():
        logits = model(**model_inputs(packed)).logits[0]
        start = 0
        for seg in bins[0]:
            alone = model(input_ids=torch.tensor([seg.input_ids])).logits[0]
            torch.testing.assert_close(logits[start:start + len(seg)], alone, atol=1e-4, rtol=1e-4)
            start += len(seg)
    assert collator.tokens == sum(len(s) for s in bins[0])


def test_histogram_buckets_every_length():
    h = histogram([5, 10, 200, 300], max_length=256, buckets=4)
    assert sum(c for _, _, c in h) == 4
    assert h[-1][2] == 1 and h[-1][1] >= 300
