"""`ftctl export` of SmolLM2-135M to F16 + Q8_0 against llama.cpp's converter and quantizer run
directly on the same merged directory, in one run. Goal (issue 27): total <= 1.5x.

ftctl's time includes what the bare tools do not: merging the adapter, the greedy reference on
probe prompts, loading each GGUF for verification, Modelfiles. The line "from merged" leaves out
the merge, so it compares like with like; "total" is what a user waits for.

Run: python benchmarks/export.py [--probe-tokens N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL = 1.5  # issue 27: ftctl export's total time at most this many times the bare tools'


def main() -> None:
    from ftctl.export import polite_threads

    polite_threads()  # as `ftctl export` does, before torch loads (both sides inherit it)
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe-tokens", type=int, default=24)
    args = ap.parse_args()

    from ftctl.lib.basemodel import resolve_base
    from ftctl.kinds import Context
    from ftctl.lib.llamacpp import find_tools
    from ftctl_plugins.exporters.gguf import ExportRequest, GgufConfig, GgufExporter, quantize
    from tests.export.conftest import make_adapter

    base = resolve_base("smollm2-135m-instruct", log=print)
    tools = find_tools()
    with tempfile.TemporaryDirectory(prefix="ftctl-bench-export-") as tmp:
        tmp = Path(tmp)
        adapter = make_adapter(base.path, tmp / "adapter")
        out = tmp / "ftctl"
        out.mkdir()
        marks: dict[str, float] = {}
        steps: list[tuple[float, str]] = []

        def log(line: str) -> None:
            print(f"  {time.perf_counter() - t0:7.1f}s  {line}")  # where ftctl's time goes
            steps.append((time.perf_counter(), line))
            marks.setdefault("from merged" if line.startswith("the merged model's greedy") else line, time.perf_counter())

        exporter = GgufExporter(GgufConfig(probe_tokens=args.probe_tokens), Context(tmp, "bench", tmp, log=log))
        t0 = time.perf_counter()
        exporter.export(ExportRequest(model="bench", version="v1.0", base=base, adapter_dir=adapter, out_dir=out,
                                      merged=True, quants=["F16", "Q8_0"], lora_gguf=False))
        ftctl_total = time.perf_counter() - t0
        ftctl_from_merged = time.perf_counter() - marks["from merged"]
        print("where ftctl's time went (each step until the next line):")
        bounds = [t0, *(t for t, _ in steps), t0 + ftctl_total]
        for line, start, end in zip(["loading the base and the tokenizer", *(ln for _, ln in steps)], bounds, bounds[1:]):
            print(f"  {end - start:7.1f}s  {line[:90]}")

        # the same work with the bare tools, on ftctl's merged directory
        bare = tmp / "bare"
        bare.mkdir()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(tools.convert_hf), str(out / "merged"), "--outfile",
                        str(bare / "F16.gguf"), "--outtype", "f16"], env=tools.env(), check=True,
                       capture_output=True)
        quantize(bare / "F16.gguf", bare / "Q8_0.gguf", "Q8_0")
        baseline = time.perf_counter() - t0

        print(f"{'':34} {'seconds':>8} {'ratio':>7}")
        print(f"{'llama.cpp convert + quantize':34} {baseline:8.2f} {1:6.2f}x  (baseline)")
        print(f"{'ftctl export, from merged':34} {ftctl_from_merged:8.2f} {ftctl_from_merged / baseline:6.2f}x")
        print(f"{'ftctl export, total (with merge)':34} {ftctl_total:8.2f} {ftctl_total / baseline:6.2f}x")
        ratio = ftctl_total / baseline
        print(f"goal (issue 27): total <= {GOAL:g}x: {'met' if ratio <= GOAL else 'NOT met'} ({ratio:.2f}x)")
        for quant in ("F16", "Q8_0"):
            a, b = (out / f"bench-v1.0-{quant}.gguf").stat().st_size, (bare / f"{quant}.gguf").stat().st_size
            print(f"{quant:5} size: ftctl {a / 1e6:7.1f} MB, bare {b / 1e6:7.1f} MB")


if __name__ == "__main__":
    main()
