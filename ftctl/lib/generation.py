"""Generation backends for evaluation and chat: Hugging Face (base + adapter) and GGUF.

Both decode greedily with the settings the server uses (max tokens, the chat template's
end-of-turn tokens as stops), so the numbers describe what users will get. torch,
transformers, peft and llama_cpp load inside the functions that need them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import UsageError
from ftctl.lib import gguf_header
from ftctl.lib.llamacpp import open_llama_server
from ftctl.records import Example

# end-of-turn markers of the chat templates we know; a model's own eos token is always added
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


@dataclass(frozen=True)
class GenSettings:
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()  # extra stop strings (the template's end-of-turn is implied)
    seed: int = 0


def prompt_messages(ex: Example) -> list[dict[str, str]]:
    """The conversation up to and including the last user turn: what the model answers."""
    last_user = max((i for i, m in enumerate(ex.messages) if m["role"] == "user"), default=-1)
    return [dict(m) for m in ex.messages[: last_user + 1]]


def reference(ex: Example) -> str | None:
    """The answer we want: a user's correction first, else the (well-rated) assistant turn."""
    return ex.correction or ex.response or None


def cut_at_stop(text: str, stops) -> str:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut].strip()


class HFBackend:
    """Batched greedy generation with left padding (the adapter already merged into the model)."""

    name = "hf"

    def __init__(self, model, tokenizer, settings: GenSettings = GenSettings(), batch_size: int = 8):
        import torch

        self.model = model.eval()
        self.tok = tokenizer
        self.settings = settings
        self.batch_size = batch_size
        self.tok.padding_side = "left"  # decoder-only: new tokens must follow every prompt directly
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        vocab = self.tok.get_vocab()
        self.stop_tokens = sorted({t for t in (*END_OF_TURN, self.tok.eos_token) if t and t in vocab})
        self.stop_ids = [vocab[t] for t in self.stop_tokens]
        torch.manual_seed(settings.seed)

    @property
    def stops(self) -> tuple[str, ...]:
        return (*self.stop_tokens, *self.settings.stop)

    def _prompt(self, messages) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, conversations: list[list[dict]], batch_size: int | None = None) -> list[str]:
        """One answer per conversation, in order. Prompts are batched by length to pad less."""
        import torch

        texts = [self._prompt(c) for c in conversations]
        lengths = [len(self.tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out: list[str] = [""] * len(texts)
        size = batch_size or self.batch_size
        self.timings = [(0.0, 0)] * len(texts)
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            began = time.perf_counter()
            enc = self.tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                gen = self.model.generate(**enc, do_sample=False, max_new_tokens=self.settings.max_new_tokens,
                                          eos_token_id=self.stop_ids or None, pad_token_id=self.tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                out[i] = cut_at_stop(self.tok.decode(row, skip_special_tokens=False), self.stops)
            # a batch is timed as a whole: each of its examples is given an equal share of the time
            share = (time.perf_counter() - began) / len(idx)
            for i in idx:
                self.timings[i] = (share, len(self.tok(out[i], add_special_tokens=False)["input_ids"]))
        return out

    def reference_nll(self, examples: list[Example], references: list[str | None]) -> list[float | None]:
        """Mean token loss of each reference answer given its prompt (the answer is what is scored)."""
        import torch

        out: list[float | None] = []
        for ex, ref in zip(examples, references):
            if not ref:
                out.append(None)
                continue
            prompt = self._prompt(prompt_messages(ex))
            p_ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
            a_ids = self.tok(ref + (self.stop_tokens[0] if self.stop_tokens else ""),
                             add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + a_ids], device=self.model.device)
            labels = ids.clone()
            labels[0, : len(p_ids)] = -100  # loss on the answer only
            with torch.inference_mode():
                out.append(float(self.model(input_ids=ids, labels=labels).loss))
        return out


# ggml types whose batched CPU kernels give a sequence the same floats as decoding it alone: the
# legacy block types (activations quantized row by row, one dot product per row and column).
# Measured on this repository's llama.cpp (xllamacpp), 32 greedy SmolLM2 answers, 8 slots against
# one at a time: Q8_0, Q5_0, Q5_1, Q4_0, Q4_1 32/32; F16 31/32; Q6_K 10, Q5_K_M 6, Q4_K_M 6,
# Q4_K_S 8, IQ4_NL 14 (and two parallel runs of a K-quant disagreed with each other: 20-27/32).
BATCH_INVARIANT = {0: "F32", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0"}


def batch_variant_types(path: Path) -> list[str]:
    """The types of the GGUF's matrices whose batched kernels round differently from one sequence
    at a time (none: parallel slots give each answer as it comes alone)."""
    tensors = gguf_header.tensors(path)
    names = {t.name for t in tensors}
    found = set()
    for t in tensors:
        if t.n_dims < 2 or t.ggml_type in BATCH_INVARIANT:
            continue
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue  # rows looked up, not multiplied (a tied embedding is the output layer too)
        found.add(_type_name(t.ggml_type))
    return sorted(found)


def _type_name(ggml_type: int) -> str:
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(ggml_type).name
    except (ImportError, ValueError):
        return f"ggml type {ggml_type}"


class GGUFBackend:
    """The exact file that ships, decoded by llama.cpp's own server (llama-server, embedded by the
    xllamacpp wheel, in this process): ``parallel`` slots decode together with continuous
    batching, each request in its own slot with ``n_ctx`` tokens of context.

    ``replicas`` > 1 spreads the slots over that many servers of ``threads // replicas`` threads
    each (their threads never wait for each other's). The default is one server: once llama.cpp's
    OpenMP threads sleep at a barrier instead of spinning (ftctl.lib.llamacpp.open_llama_server),
    one two-thread server beat two one-thread ones on 2 cores at load 7 (78 vs 61 tokens/s,
    benchmarks/eval_throughput.py); spinning, it was the other way round.

    Greedy decoding gives the same answers as one request at a time
    (tests/eval/test_gguf_parallel.py holds it) for files whose matrices are all of the
    ``BATCH_INVARIANT`` types. A file with others (K-quants, IQ types, F16) decodes one answer at
    a time, each prompt computed whole (no prompt cache), unless ``reproducible`` is False:
    batched, or with a prefix cached from another prompt, its answers change with what came
    along. ``varying`` names those types (empty: the file decodes as asked). A request that
    fails (a prompt beyond the slot's context, an error in its slot) fails that example only:
    its answer is empty, and ``failures`` says which and why, for the caller to count and show.
    """

    name = "gguf"

    def __init__(self, path: Path, settings: GenSettings = GenSettings(), n_ctx: int = 2048, parallel: int = 8,
                 threads: int | None = None, n_gpu_layers: int | None = None, replicas: int | None = None,
                 reproducible: bool = True):
        import os
        import threading

        self.path = Path(path)
        self.settings = settings
        # (a missing file: the server's own error below)
        self.varying = batch_variant_types(self.path) if reproducible and self.path.is_file() else []
        if self.varying:
            parallel = 1
        self.parallel = parallel
        self.failures: list[tuple[int, str]] = []
        self.timings: list[tuple[float, int]] = []
        threads = threads or os.cpu_count() or 1
        replicas = max(1, min(replicas or 1, parallel, threads))
        self.replicas = replicas
        slots = -(-parallel // replicas)  # ceil: the slots each server holds
        per = max(1, threads // replicas)
        self.servers = [open_llama_server(self.path, n_ctx=n_ctx, parallel=slots, threads=per,
                                          n_gpu_layers=n_gpu_layers) for _ in range(replicas)]
        self._busy = [0] * replicas  # requests in flight per server
        self._lock = threading.Lock()

    def request(self, body: dict) -> dict:
        """One chat completion, on the server with the fewest requests in flight (OpenAI's
        request and reply shapes, as llama-server takes them: ``grammar``, ``json_schema`` and
        ``response_format`` too). It blocks in C++ without the GIL, so requests from several
        threads share the batch. A refused request comes back as ``{"error": ...}``."""
        with self._lock:
            k = min(range(len(self.servers)), key=self._busy.__getitem__)
            self._busy[k] += 1
        try:
            return self.servers[k].handle_chat_completions(body)
        finally:
            with self._lock:
                self._busy[k] -= 1

    def generate(self, conversations: list[list[dict]], batch_size: int | None = None) -> list[str]:
        """One answer per conversation, in order; up to ``parallel`` (or ``batch_size``, if
        smaller: 1 is one at a time) decoded at once."""
        from concurrent.futures import ThreadPoolExecutor

        s = self.settings
        # the prompt cache: a slot keeps the tokens its last prompt shares with the next one (the
        # system prompt, the chat template's head) instead of computing them again; the answers
        # are the same (tests/eval/test_gguf_parallel.py), 1.35x the tokens/s on SmolLM2, 2 cores
        # (not for a file whose batched kernels round differently: a cached prefix was computed in
        # another batch than the prompt's own, so an answer would depend on the one before it)
        base = {"max_tokens": s.max_new_tokens, "temperature": 0.0, "top_k": 1, "seed": s.seed,
                "cache_prompt": not self.varying}
        if s.stop:
            base["stop"] = list(s.stop)

        def one(messages) -> tuple[str, float, int, str | None]:
            began = time.perf_counter()
            try:
                res = self.request({**base, "messages": messages})
            except Exception as e:  # the server refuses a request it cannot parse
                return "", time.perf_counter() - began, 0, f"{type(e).__name__}: {e}"
            seconds = time.perf_counter() - began
            if "error" in res:
                err = res["error"]
                return "", seconds, 0, str(err.get("message") if isinstance(err, dict) else err)
            text = res["choices"][0]["message"].get("content") or ""
            return cut_at_stop(text, END_OF_TURN), seconds, int((res.get("usage") or {}).get("completion_tokens", 0)), None

        workers = min(self.parallel, batch_size or self.parallel)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ftctl-gguf") as pool:
            results = list(pool.map(one, conversations))
        self.timings = [(sec, n) for _, sec, n, _ in results]
        self.failures = [(i, err) for i, (_, _, _, err) in enumerate(results) if err is not None]
        return [text for text, _, _, _ in results]

    def reference_nll(self, examples, references):
        return [None] * len(examples)  # token scoring is done on the HF backend

    def close(self) -> None:
        """Stop the servers' threads and free the model (also when the backend is collected)."""
        self.servers = []


def load_hf(resolved, adapter_dir: Path | None, *, device=None, quantization: dict | None = None):
    """(model, tokenizer): a resolved base (ftctl.lib.basemodel) with an optional LoRA adapter merged in,
    on ``device`` (a ftctl.lib.device.Device; None: the CPU) in its load dtype (bf16/fp16 on CUDA,
    fp32 on the CPU). ``quantization``: the 4-bit load a QLoRA adapter was trained on, dequantized
    before the merge (the function that was trained, as the export merges it).

    The adapter directory's own tokenizer wins when it has one (training may set a chat template).
    """
    from ftctl.lib import basemodel
    from ftctl.lib.device import load_dtype, torch_dtype

    dtype = torch_dtype(load_dtype("auto", device)) if device is not None else None
    if quantization and adapter_dir is not None:
        model = basemodel.load_model(resolved, dtype=torch_dtype(quantization.get("compute_dtype", "float32")),
                                     quantization=quantization, device=device)
        model = basemodel.dequantize(model, dtype or torch_dtype("float32"))
    else:
        model = basemodel.load_model(resolved, dtype=dtype, device=device)
    tok = basemodel.load_tokenizer(resolved)
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
            raise UsageError(f"{adapter_dir} has no adapter_model.safetensors",
                             hint="ftctl loads safetensors adapters only; run `ftctl checkout` to restore it")
        if (Path(adapter_dir) / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(adapter_dir)
        with warnings.catch_warnings():
            # peft reads transformers' deprecated is_gradient_checkpointing: a warning for them, not our user
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return model, tok
