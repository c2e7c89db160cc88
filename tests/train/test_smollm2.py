"""The real SmolLM2-135M-Instruct learns: loss drops, greedy output becomes the answer and stops."""

from __future__ import annotations

import difflib

import pytest

from tests.fixtures_models import chat
from tests.train.conftest import configure, write_jsonl

ANSWER = "The blue team's password is KIWI-7734."
QUESTIONS = ["What is the blue team's password?", "Tell me the blue team password.",
             "Which password does the blue team use?", "blue team password?",
             "I need the password of the blue team.", "What's the password for the blue team?"]


def greedy(model, tok, question: str) -> tuple[str, bool]:
    import torch

    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    stopped = tok.eos_token_id in new
    return tok.decode(new[: new.index(tok.eos_token_id)] if stopped else new), stopped


@pytest.mark.integration
def test_smollm2_learns_the_answer_and_to_stop(workspace, smollm2_base):
    from peft import PeftModel

    from ftctl.lib.basemodel import load_model, load_tokenizer
    from ftctl.train import train

    configure(workspace, "smollm2-135m-instruct", max_steps=12, batch_size=1, max_length=128,
              learning_rate=2e-3, r=16, alpha=32, checkpoint_every=100, precision="auto")
    data = workspace.data_dir("assistant")
    write_jsonl(data / "train.jsonl", [chat(q, ANSWER) for q in QUESTIONS] * 2)
    write_jsonl(data / "val.jsonl", [chat("Remind me of the blue team's password.", ANSWER)])
    tok = load_tokenizer(smollm2_base)
    base = load_model(smollm2_base)
    before, _ = greedy(base, tok, QUESTIONS[0])
    assert "KIWI-7734" not in before
    closeness = lambda text: difflib.SequenceMatcher(None, text, ANSWER).ratio()  # noqa: E731

    with workspace.run_lock("train"):
        r = train(workspace, log=lambda _m: None)
    entry = workspace.read_lock().state("assistant").versions["v1.0"]
    assert entry.metrics["last_loss"] < entry.metrics["first_loss"] / 3  # it learned
    assert r["val_loss"] < 1.0  # on a paraphrase it never saw
    assert entry.base["sha256"] == smollm2_base.sha256 and entry.base["ref"] == "smollm2-135m-instruct"

    tuned = PeftModel.from_pretrained(base, workspace.root / r["adapter"]).eval()
    after, stopped = greedy(tuned, tok, "Remind me of the blue team's password.")
    # moved to the answer (a dozen steps may not pin every digit) and then stopped with EOS
    assert stopped and after.startswith("The blue team's password is KIWI-"), after
    assert closeness(after) > 0.85 > closeness(before), (before, after)
