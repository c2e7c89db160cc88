"""Does a GGUF behave like the model it was made from? Teacher-forced parity, calibrated on the base.

Both models read the same tokens: each probe's prompt plus the merged (HF) model's own greedy
continuation. At every position of the continuation the next-token distributions are compared:
top-1 agreement and KL(HF || GGUF), the figures llama.cpp's `llama-perplexity --kl-divergence`
reports ("same top p", mean KLD). A near-tied token that flips costs one position, not the rest of
the probe (free-running agreement compounded it; kept only for the human-readable hint).

What a quant type costs is a property of the model, not of the fine-tune: each type's limits come
from the untuned base's GGUF of that type on the same probes (cached per base, type and probe set),
and a fine-tune fails only when its GGUF is clearly worse than that (margins in config).

numpy/torch/llama_cpp load inside functions: `ftctl plugins` imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Bump when the measure changes: cached base figures of another method are not comparable.
METHOD = "teacher-forced-v3"  # v3: distributions from generation's own logits
# Two tokens the HF model rates within this many nats (5%) of each other are tied: either is its
# top-1, so a GGUF that picks the other agrees. Half-precision rounding alone moves logits by a few
# hundredths (an F16 GGUF of a tiny model flipped a 0.018-nat near-tie at KL 1e-5); llama.cpp's
# "same top p" counts such a flip as a miss, which measures rounding, not the conversion.
TIE = 0.05
# KV cells of the teacher-forced pass (one sequence per probe, decoded together in one llama_decode):
# bounds the cache a verification allocates, whatever the number and length of probes.
BATCH_CELLS = 2048
# How many probes the hint shows (the worst by summed KL), each with free-running continuations.
HINT_PROBES = 2


class Margins(BaseModel):
    """How much worse than the base's GGUF of the same type a fine-tune's GGUF may be."""

    model_config = ConfigDict(extra="forbid")

    top1_drop: float = Field(0.03, ge=0, le=1, description=(
        "top-1 agreement may be this much below the base's (0.03 = 3 points) ..."))
    top1_noise: float = Field(2.0, ge=0, description=(
        "... plus this many standard errors of the difference of two agreement rates (binomial), so "
        "that a small probe set does not fail by chance"))
    kl_ratio: float = Field(3.0, ge=1, description="mean KL may be this many times the base's ...")
    kl_slack: float = Field(0.05, ge=0, description="... plus this many nats (room for sampling noise "
                                                    "when the base's KL is near zero)")


@dataclass
class Probe:
    text: str  # the prompt rendered with the chat template
    prompt: list[int]  # its token ids (HF tokenizer)
    continuation: list[int]  # the HF model's greedy continuation (through EOS, if it came)
    logprobs: Any = None  # np.ndarray [len(continuation), vocab]: HF log-softmax before each continuation token

    @property
    def label(self) -> str:
        return self.text.strip()[-60:]


@dataclass
class Reference:
    """The HF model's side: greedy continuations and its next-token distributions along them."""

    probes: list[Probe]
    decode: Callable[[list[int]], str]

    @classmethod
    def compute(cls, model, tok, prompts: list[list[dict[str, str]]], max_new_tokens: int,
                stop: threading.Event | None = None) -> Reference:
        """Continuations and their distributions in one left-padded batch: generation's own
        logits at each step are the teacher-forced distributions along the greedy continuation
        (a second forward pass per probe recomputed them; CPU transformers is the slowest step of
        an export, see benchmarks/export.py). Probes are deduplicated and sorted by text: the
        figures are a function of the probe *set*, whatever order the config or the test split
        lists them in. ``stop`` set: generation ends at the next step (its caller gave up: the
        result is cut short, not for use)."""
        import torch
        from transformers import StoppingCriteria

        class Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop is not None and stop.is_set(), dtype=torch.bool)

        texts = probe_texts(tok, prompts)
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tok.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(map(len, ids))
        batch = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            # raw logits (before any logits processor): the model's distributions, as a forward pass gives
            out = model.generate(batch, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=pad, output_logits=True, return_dict_in_generate=True,
                                 stopping_criteria=[Stop()] if stop is not None else None)
            logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)  # [probe, step, vocab]
        probes = []
        for i, (text, prompt, row) in enumerate(zip(texts, ids, out.sequences[:, width:].tolist())):
            cut = next((j + 1 for j, t in enumerate(row) if t in eos_ids), len(row))  # through the first EOS
            probes.append(Probe(text, prompt, row[:cut], logprobs[i, :cut].numpy() if cut else None))
        return cls(probes, lambda t: tok.decode(t, skip_special_tokens=False))



@dataclass
class Figures:
    top1: float  # share of positions where both models pick the same most likely next token (ties: TIE)
    kl_mean: float  # mean KL(HF || GGUF) of the next-token distributions, nats
    kl_p99: float
    kl_max: float
    positions: int

    def rounded(self) -> dict[str, Any]:
        return {"top1": round(self.top1, 4), "kl_mean": round(self.kl_mean, 5), "kl_p99": round(self.kl_p99, 4),
                "kl_max": round(self.kl_max, 4), "positions": self.positions}


@dataclass
class Measurement:
    figures: Figures
    problems: list[str]  # broken regardless of figures: chat template, EOS/BOS, tokenisation
    diffs: list[dict[str, str]] = field(default_factory=list)  # worst probes, free-running HF vs GGUF


def measure(path: Path, ref: Reference, tok, *, lora: Path | None = None, n_threads: int | None = None,
            check_tokens: bool = True, hint_if: Callable[[Figures], bool] | None = None) -> Measurement:
    """Run the GGUF (plus a GGUF LoRA) over every probe's tokens and compare with ``ref``.

    ``hint_if(figures)``: whether to add the worst probes' free-running answers (``diffs``) for a
    failure's hint. Only then: decoding them token by token cost as much as the teacher-forced
    pass itself, for a file that passes."""
    import numpy as np

    llama_cpp = _llama_cpp()
    n_ctx = max(len(p.prompt) + len(p.continuation) for p in ref.probes) + 8
    kwargs = {"lora_path": str(lora)} if lora else {}
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(n_ctx, 64), logits_all=True, verbose=False,
                          n_threads=n_threads or os.cpu_count(), seed=0, **kwargs)
    try:
        problems = check_metadata(llm, tok, check_template=lora is None) + (check_vocab(llm, tok, ref) if check_tokens else [])
        kls, same, per_probe = [], [], []
        for p, logits in _teacher_forced(llm, [p for p in ref.probes if p.continuation], n_threads):
            hf = p.logprobs.astype(np.float64)
            n = min(hf.shape[1], logits.shape[1])  # sizes differ only when the vocab is broken (reported)
            gg = logits[:, :n] - _logsumexp(logits[:, :n])
            kl = (np.exp(hf[:, :n]) * (hf[:, :n] - gg)).sum(axis=-1)
            kls.append(np.maximum(kl, 0.0))
            rows = np.arange(len(hf))
            hf_top, gg_top = hf.argmax(axis=-1), logits.argmax(axis=-1)
            same.append((hf_top == gg_top) | (hf[rows, hf_top] - hf[rows, np.minimum(gg_top, hf.shape[1] - 1)] <= TIE))
            per_probe.append((float(kl.sum()), p))
        kl_all = np.concatenate(kls) if kls else np.zeros(1)
        agree = np.concatenate(same) if same else np.ones(1, dtype=bool)
        figures = Figures(float(agree.mean()), float(kl_all.mean()), float(np.percentile(kl_all, 99)),
                          float(kl_all.max()), int(agree.size if same else 0))
        diffs = []
        worst = sorted(per_probe, key=lambda x: -x[0])[:HINT_PROBES] if hint_if and hint_if(figures) else []
        for _, p in worst:
            mine = _greedy(llm, p.prompt, len(p.continuation))
            if mine != p.continuation:
                diffs.append({"probe": p.label, "hf": ref.decode(p.continuation), "gguf": ref.decode(mine)})
    finally:
        llm.close()
    return Measurement(figures, problems, diffs)


def limits(base: Figures, m: Margins, fig: Figures) -> dict[str, float]:
    """The worst figures ``fig`` may have, given the base's for the same type."""
    nb, nf = max(base.positions, 1), max(fig.positions, 1)
    # the standard error of a difference of two rates from their pooled rate (two-proportion z-test)
    p = (base.top1 * nb + fig.top1 * nf) / (nb + nf)
    se = (p * (1 - p) * (1 / nb + 1 / nf)) ** 0.5
    return {"min_top1": round(max(0.0, p - m.top1_drop - m.top1_noise * se), 4),
            "max_kl": round(base.kl_mean * m.kl_ratio + m.kl_slack, 5)}


def judge(fig: Figures, base: Figures, m: Margins, quant: str) -> list[str]:
    """Why ``fig`` is clearly worse than the base's GGUF of the same type ([] = it is not)."""
    lim = limits(base, m, fig)
    out = []
    if fig.top1 < lim["min_top1"]:
        out.append(f"top-1 agreement {fig.top1:.1%} is below {lim['min_top1']:.1%} (the base's {quant}: "
                   f"{base.top1:.1%}, minus {m.top1_drop:.0%} and {m.top1_noise:g} standard errors)")
    if fig.kl_mean > lim["max_kl"]:
        out.append(f"mean KL divergence {fig.kl_mean:.4f} is above {lim['max_kl']:.4f} (the base's {quant}: "
                   f"{base.kl_mean:.4f}, x{m.kl_ratio:g} + {m.kl_slack:g})")
    return out


# --- the base's figures, cached ---------------------------------------------------------------


class BaseFigures:
    """What each type costs the untuned base on a probe set: measured once, then read from
    ``<cache>/parity/`` (key: base sha256, type, probe set, method, llama-cpp-python version)."""

    def __init__(self, cache_dir: Path, base_sha256: str, texts: list[str], max_new_tokens: int):
        self.dir = Path(cache_dir) / "parity"
        self.stem = hashlib.sha256(json.dumps([base_sha256, texts, max_new_tokens, METHOD,
                                               _llama_cpp_version()]).encode()).hexdigest()[:24]

    def path(self, quant: str) -> Path:
        return self.dir / f"{self.stem}-{quant}.json"

    def get(self, quant: str) -> Figures | None:
        try:
            return Figures(**json.loads(self.path(quant).read_text())["figures"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or unreadable: measure again

    def put(self, quant: str, fig: Figures) -> None:
        from ftctl.api import write_text

        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.path(quant), json.dumps({"quant": quant, "method": METHOD, "figures": asdict(fig)}))


# --- checks that fail whatever the figures ----------------------------------------------------


def check_metadata(llm, tok, *, check_template: bool = True) -> list[str]:
    """The chat template and the EOS/BOS ids must survive conversion exactly.

    Read through llama.cpp itself (what the server will use); gguf's GGUFReader parses every
    vocab array element by element, which takes tens of seconds on a 49k-token vocab."""
    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    problems = []
    # a GGUF LoRA runs on the base GGUF, whose template is the base's: only a merged file must carry ours
    if check_template and tok.chat_template and template != tok.chat_template:
        problems.append("the chat template is missing from the GGUF" if not template
                        else "the GGUF's chat template differs from the tokenizer's")
    if tok.eos_token_id is not None and llm.token_eos() != tok.eos_token_id:
        problems.append(f"EOS id is {llm.token_eos()} in the GGUF, {tok.eos_token_id} ({tok.eos_token}) "
                        "in the tokenizer")
    if tok.bos_token_id is not None and llm.token_bos() != tok.bos_token_id:
        problems.append(f"BOS id is {llm.token_bos()} in the GGUF, {tok.bos_token_id} in the tokenizer")
    return problems


def check_vocab(llm, tok, ref: Reference) -> list[str]:
    """Every tokenizer token is in the GGUF under the same id, and llama.cpp tokenizes the rendered
    prompts exactly as the tokenizer does. (Decoded continuations are not compared: re-tokenising
    decoded text legitimately splits differently at a cut-off, a false alarm seen on SmolLM2 F16.)"""
    problems = []
    if llm.n_vocab() < len(tok):
        problems.append(f"the GGUF has {llm.n_vocab()} tokens, the tokenizer {len(tok)}")
    vocab = tok.convert_ids_to_tokens(list(range(min(len(tok), llm.n_vocab()))))
    for i, want in enumerate(vocab):
        have = llm._model.token_get_text(i)  # the token's stored text (llama_vocab_get_text)
        if want is not None and have != want and (not have or have.startswith("[PAD")):
            problems.append(f"token {i} ({want!r}) is missing from the GGUF's vocabulary")
            break
    for p in ref.probes:
        ids = llm.tokenize(p.text.encode(), add_bos=False, special=True)
        if ids != p.prompt:
            problems.append(f"llama.cpp tokenizes the prompt {p.label!r} differently "
                            f"({len(ids)} vs {len(p.prompt)} tokens)")
            break
    return problems


# --- helpers --------------------------------------------------------------------------------


def probe_texts(tok, prompts: list[str | list[dict[str, str]]]) -> list[str]:
    """The probe set: each prompt rendered with the chat template, deduplicated, sorted."""
    return sorted({render_prompt(tok, p) for p in prompts})


def render_prompt(tok, prompt: str | list[dict[str, str]]) -> str:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if tok.chat_template:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages)


def _logsumexp(x):
    import numpy as np

    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def _teacher_forced(llm, probes: list[Probe], n_threads: int | None):
    """Yields (probe, the GGUF's logits before each continuation token): the probes' tokens decoded
    together, one sequence each, in as few llama_decode calls as BATCH_CELLS allows (the logits
    are exactly those of decoding each probe alone). One call per
    probe (and one per probe and position, decoding) was most of a verification: each call is a
    round of thread synchronisation, and on a busy machine the waits dominated."""
    import ctypes

    import numpy as np

    llama_cpp = _llama_cpp()
    if not probes:
        return
    # a cache per sequence (each probe attends over its own cells only, as when decoded alone: one
    # shared cache changed a Q8_0 probe's logits by up to 0.6, other reduction orders); llama.cpp
    # gives each sequence a multiple of 256 cells
    cells = -(-max(map(_tf_len, probes)) // 256) * 256
    per_call = max(1, BATCH_CELLS // cells)
    groups = [probes[i:i + per_call] for i in range(0, len(probes), per_call)]
    params = llama_cpp.llama_context_default_params()
    for name, *_ in params._fields_:  # the Llama's own settings (flash attention off, ...): the same numerics
        setattr(params, name, getattr(llm.context_params, name))
    params.n_seq_max = len(groups[0])
    params.n_ctx = params.n_seq_max * cells
    params.kv_unified = False
    params.n_batch = max(sum(map(_tf_len, g)) for g in groups)
    params.n_ubatch = min(params.n_batch, 512)
    params.n_threads = params.n_threads_batch = n_threads or os.cpu_count() or 1
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    if ctx is None:
        raise RuntimeError(f"llama.cpp could not make a context of {params.n_ctx} tokens")
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
    try:
        if llm._lora_adapter is not None:  # the same adapter, at the same scale, as the Llama's own context
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
            if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(llm.lora_scale)):
                raise RuntimeError("llama.cpp could not apply the GGUF LoRA")
        n_vocab = llm.n_vocab()
        for group in groups:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            k, rows = 0, []
            for seq, p in enumerate(group):
                start = len(p.prompt) - 1  # the prompt's last token predicts the first continuation token
                for pos, token in enumerate(p.prompt + p.continuation[:-1]):
                    batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = token, pos, 1, pos >= start
                    batch.seq_id[k][0] = seq
                    k += 1
                rows.append(range(k - len(p.continuation), k))
            batch.n_tokens = k
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama.cpp could not decode the probes")
            for p, r in zip(group, rows):
                yield p, np.stack([np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                                   for i in r]).astype(np.float64)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def _tf_len(p: Probe) -> int:
    return len(p.prompt) + len(p.continuation) - 1


def _greedy(llm, prompt: list[int], n: int) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        if t == llm.token_eos():
            break
        llm.eval([t])
    return out


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        from ftctl.api import ExternalToolError

        raise ExternalToolError("llama-cpp-python is not installed",
                                hint="pip install 'ftctl[export]' (it builds llama.cpp; a few minutes)") from None
    return llama_cpp


def _llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return "?"
