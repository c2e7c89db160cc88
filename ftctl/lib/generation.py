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
from ftctl.lib.llamacpp import open_llama
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
            enc = self.tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
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
            ids = torch.tensor([p_ids + a_ids])
            labels = ids.clone()
            labels[0, : len(p_ids)] = -100  # loss on the answer only
            with torch.inference_mode():
                out.append(float(self.model(input_ids=ids, labels=labels).loss))
        return out


class GGUFBackend:
    """The exact file that ships, through llama-cpp-python (one prompt at a time)."""

    name = "gguf"

    def __init__(self, path: Path, settings: GenSettings = GenSettings(), n_ctx: int = 2048):
        self.path = Path(path)
        self.settings = settings
        self.llm = open_llama(self.path, n_ctx=n_ctx, seed=settings.seed)

    def generate(self, conversations: list[list[dict]], batch_size: int | None = None) -> list[str]:
        out = []
        self.timings = []
        for messages in conversations:
            self.llm.reset()  # no state carried between prompts: the same answer on every run
            began = time.perf_counter()
            res = self.llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1,
                                                  seed=self.settings.seed,
                                                  max_tokens=self.settings.max_new_tokens,
                                                  stop=list(self.settings.stop) or None)
            out.append(cut_at_stop(res["choices"][0]["message"]["content"] or "", END_OF_TURN))
            self.timings.append((time.perf_counter() - began, int((res.get("usage") or {}).get("completion_tokens", 0))))
        return out

    def reference_nll(self, examples, references):
        return [None] * len(examples)  # token scoring is done on the HF backend


def load_hf(resolved, adapter_dir: Path | None):
    """(model, tokenizer): a resolved base (ftctl.lib.basemodel) with an optional LoRA adapter merged in.

    The adapter directory's own tokenizer wins when it has one (training may set a chat template).
    """
    from ftctl.lib import basemodel

    model = basemodel.load_model(resolved)
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
