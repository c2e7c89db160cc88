"""DPO on the real SmolLM2-135M-Instruct: the held-out margin grows, unrelated answers stay sane.

Bound on unrelated prompts (none of them in the pairs): the base's own greedy answers lose at
most 0.5 nats per token of log-probability under the trained model (it stays near its
reference), and every answer the trained model gives is non-empty with at least 40% distinct
tokens (no repetition collapse).
"""

from __future__ import annotations

import pytest

from tests.conftest import run_json
from tests.loop.test_preference import COLOURS, pair, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNRELATED = ["Write one sentence about the ocean.", "What is 2 + 2?", "Name a programming language.",
             "Give me a synonym for happy."]
MAX_NATS_LOST = 0.5
MIN_DISTINCT = 0.4


def greedy(model, tok, prompt: str, n: int = 24) -> list[int]:
    import torch

    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def nats_per_token(model, tok, prompt: str, answer: list[int]) -> float:
    import torch

    head = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)["input_ids"][0].tolist()
    x = torch.tensor([head + answer])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    tail = lp[len(head) - 1:].gather(1, x[0, len(head):].unsqueeze(1))
    return float(tail.mean())


def test_dpo_grows_the_heldout_margin_without_collapse(workspace, smollm2_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = [pair(t, c, "test" if i % 4 == 0 else "train") for i, (t, c) in enumerate(COLOURS)]
    snapshot(workspace, pairs, smollm2_base.path, {"trainer": "lora", "dpo": {
        "max_steps": 12, "batch_size": 3, "learning_rate": 2e-4, "beta": 0.1, "r": 8, "alpha": 16,
        "max_length": 96}})
    out = run_json("train", "--trainer", "dpo", cwd=workspace.root, timeout=1800)  # ~70 s alone; a hang guard
    entry = workspace.read_lock().state("assistant").versions[out["version"]]
    m = entry.metrics
    print(f"held-out margin {m['margin_before']} -> {m['margin_after']}, "
          f"accuracy {m['pref_accuracy_before']} -> {m['pref_accuracy_after']} on {entry.dataset['heldout_pairs']} pairs")
    assert entry.dataset["pairs"] == {"train": 9, "heldout": 3}
    assert m["margin_after"] > m["margin_before"] + 1.0  # nats: the chosen answers became clearly likelier

    tok = AutoTokenizer.from_pretrained(smollm2_base.path)
    base = AutoModelForCausalLM.from_pretrained(smollm2_base.path).eval()
    answers = {p: greedy(base, tok, p) for p in UNRELATED}
    before = {p: nats_per_token(base, tok, p, a) for p, a in answers.items()}
    tuned = PeftModel.from_pretrained(base, workspace.root / entry.adapter["path"]).eval()
    for p, a in answers.items():
        lost = before[p] - nats_per_token(tuned, tok, p, a)
        new = greedy(tuned, tok, p)
        print(f"{p!r}: {lost:.3f} nats/token lost; answer {tok.decode(new, skip_special_tokens=True)!r}")
        assert lost <= MAX_NATS_LOST
        assert new and len(set(new)) / len(new) >= MIN_DISTINCT
