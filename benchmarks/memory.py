"""Memory you can plan: `ftctl train --preview`'s predicted peak against the measured peak RSS.

For SmolLM2-135M-Instruct and two tiny random models (a 2-layer Llama 64 wide, a 4-layer Mistral
256 wide, both with SmolLM2's tokenizer), in LoRA (fp32) and QLoRA (4-bit NF4, bitsandbytes' CPU
backend, gradient checkpointing), and SmolLM2 in LoRA under bf16 autocast with half the layers
checkpointed: a fresh workspace each, `ftctl train --preview --json` gives
the prediction (from the config on the meta device, no weights loaded), then `ftctl train --json`
a few steps in its own process gives the measured peak RSS. Goal (issue 24): within 15%.

Also prints the predictions for the Mistral-7B- and Llama-3-8B-shaped configs of
tests/fixtures (configs only) on a 24 GB and a 12 GB card.

    .venv/bin/python benchmarks/memory.py [--steps 3] [--max-length 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _goals import verdict  # noqa: E402

GOAL = 0.15
SETTINGS = {"lora": {"qlora": False, "precision": "fp32"}, "qlora": {"qlora": True}}
# one row under bf16 autocast on the CPU (precision bf16: autocast on any CPU), half the layers
# checkpointed: its matmuls keep bf16, which the meta forward counts by applying autocast's casts
BF16 = {"model": "SmolLM2-135M", "setting": "bf16 0.5", "config": {"qlora": False, "precision": "bf16",
                                                                    "gradient_checkpointing": 0.5}}


def tiny_models(out: Path) -> dict[str, Path]:
    """Two random models with SmolLM2's tokenizer (widths in whole blocks of 64 for 4-bit on CPU)."""
    import torch
    from transformers import LlamaConfig, MistralConfig, MistralForCausalLM

    from ftctl.lib.basemodel import DEFAULT_BASE, resolve_base
    from tests.fixtures_models import TOKENIZER_FILES, make_tiny

    smol = resolve_base(DEFAULT_BASE).path
    llama = make_tiny(out / "tiny-llama", smol, hidden_size=64, intermediate_size=128)
    real = LlamaConfig.from_pretrained(smol)
    mistral = out / "tiny-mistral"
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(hidden_size=256, intermediate_size=640, num_hidden_layers=4,
                                     num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False,
                                     vocab_size=real.vocab_size, bos_token_id=real.bos_token_id,
                                     eos_token_id=real.eos_token_id)).save_pretrained(mistral)
    for f in TOKENIZER_FILES:
        if (smol / f).is_file():
            shutil.copy(smol / f, mistral / f)
    return {"tiny-llama (2x64)": llama, "tiny-mistral (4x256)": mistral}


def rows(n: int = 24) -> list[dict]:
    """Chats long enough that packed rows fill max_length."""
    words = "the model answers each support question with the policy and the order number".split()
    out = []
    for i in range(n):
        answer = " ".join(words[(i + k) % len(words)] for k in range(40 + 7 * (i % 5)))
        out.append({"messages": [{"role": "user", "content": f"Question {i}: what does the policy say?"},
                                 {"role": "assistant", "content": answer}]})
    return out


def ftctl(*args, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ftctl", "--json", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"ftctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def run(base: str, setting: dict, steps: int, max_length: int, work: Path) -> dict:
    from ruamel.yaml import YAML

    ws = work / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    ftctl("init", str(ws), cwd=work)
    y = YAML(typ="safe", pure=True)
    cfg = y.load((ws / "ftctl.yaml").read_text())
    cfg["base"] = base
    cfg["train"] = {"trainer": "lora", "lora": {"r": 16, "alpha": 32, "batch_size": 2, "max_length": max_length,
                                                "max_steps": steps, "checkpoint_every": 1000, **setting}}
    with open(ws / "ftctl.yaml", "w") as f:
        y.dump(cfg, f)
    data = ws / "data" / "assistant"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()))
    preview = ftctl("train", "--preview", cwd=ws)
    predicted = preview["memory"][0]
    trained = ftctl("train", cwd=ws)
    measured = trained["peak_rss_mb"] * 2**20
    return {"predicted": predicted["total"], "parts": predicted["parts"], "measured": measured,
            "error": (predicted["total"] - measured) / measured}


def planning() -> list[dict]:
    """The 7B/8B-shaped configs (no weights) on the cards a GPU user has."""
    from ftctl.kinds import Context
    from ftctl.lib.basemodel import ResolvedBase
    from ftctl.lib.device import card
    from ftctl_plugins.trainers.lora import LoraConfig, LoraTrainer

    out = []
    for name in ("mistral-7b", "llama-3-8b"):
        base = ResolvedBase(name, ROOT / "tests" / "fixtures" / name, "", None, False)
        for label, cfg in (("QLoRA", {"qlora": True}), ("LoRA bf16 + checkpointing", {"gradient_checkpointing": True}),
                           ("LoRA bf16", {}), ("LoRA fp32", {"precision": "fp32"})):
            t = LoraTrainer(LoraConfig(max_length=1024, **cfg), Context(ROOT, "m", ROOT, log=lambda _m: None))
            for gib in (24, 12):
                est = t.memory(base, card(gib))
                out.append({"model": name, "setting": label, "card": f"{gib} GB", "total": est.total,
                            "fits": est.fits, "parts": est.parts})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--only", help="run only models whose name contains this")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ftctl-memory-"))
    models = {"SmolLM2-135M": "smollm2-135m-instruct", **{k: str(v) for k, v in tiny_models(work).items()}}
    results = []
    for name, base in models.items():
        if a.only and a.only not in name:
            continue
        settings = {**SETTINGS, **({BF16["setting"]: BF16["config"]} if name == BF16["model"] else {})}
        for label, setting in settings.items():
            r = run(base, setting, a.steps, a.max_length, work)
            results.append({"model": name, "setting": label, **r})
            print(f"{name:22} {label:8} predicted {r['predicted'] / 2**20:7.0f} MB, measured "
                  f"{r['measured'] / 2**20:7.0f} MB: {100 * r['error']:+5.1f}%", file=sys.stderr, flush=True)
    plan = planning()
    shutil.rmtree(work, ignore_errors=True)
    if a.json:
        print(json.dumps({"measured": results, "planning": plan}, indent=2))
        return
    print(f"peak memory, predicted (train --preview) vs measured (peak RSS of train), CPU, max_length "
          f"{a.max_length}, batch 2, r 16, {a.steps} steps; goal within {GOAL:.0%}")
    print(f"| {'model':22} | setting | predicted MB | measured MB | error |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']:22} | {r['setting']:8} | {r['predicted'] / 2**20:12.0f} | {r['measured'] / 2**20:11.0f} "
              f"| {100 * r['error']:+5.1f}% |")
    worst = max((abs(r["error"]) for r in results), default=0)
    verdict("worst error of the predicted peak", 100 * worst, 100 * GOAL, higher_is_better=False, unit="%", fmt=".1f")
    print("\nplanning (max_length 1024, batch 2, r 16), predicted peak on a card:")
    print("| model | setting | 24 GB | 12 GB |\n|---|---|---|---|")
    for i in range(0, len(plan), 2):
        a24, a12 = plan[i], plan[i + 1]
        cell = lambda e: f"{e['total'] / 2**30:.1f} GiB {'fits' if e['fits'] else 'does not fit'}"  # noqa: E731
        print(f"| {a24['model']} | {a24['setting']} | {cell(a24)} | {cell(a12)} |")


if __name__ == "__main__":
    main()
