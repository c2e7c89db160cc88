"""LLM-as-judge: a local GGUF judge (llama.cpp) or any OpenAI-compatible endpoint.

Alone (``ftctl eval v1.1``) the judge grades each answer 1..10 against the rubric (scaled to
0..1). In a comparison it judges the two answers side by side, twice with the positions
swapped, so a judge's bias for the first (or second) slot cancels out: each example gives A and
B a share of one point (1 = won both orders, 0.5 = a tie or a split decision).
"""

from __future__ import annotations

import os
import re
import time

from pydantic import Field, model_validator

from ftctl.api import Evaluator, FtctlError, PluginConfig, open_llama

RUBRIC = ("Judge how helpful, correct and concise the answer is for the user's question. "
          "A reference answer, when given, shows what a good answer contains.")
_SCORE = re.compile(r"SCORE:\s*(10|[1-9])\b", re.I)
_WINNER = re.compile(r"WINNER:\s*(A|B|TIE)\b", re.I)


class JudgeError(FtctlError):
    """The judge could not be reached or kept answering in a shape we cannot read."""


class LlmJudge(Evaluator):
    name = "llm_judge"
    needs_reference = False
    pairwise = True  # in a comparison: judge_pair, both orders
    _llama = None  # the local GGUF judge, loaded on first use

    class Config(PluginConfig):
        endpoint: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")
        model: str = Field("judge", description="the model name sent to the endpoint")
        api_key_env: str | None = Field(None, description="the *name* of the variable holding the key, never the key")
        gguf: str | None = Field(None, description="or a local GGUF judge run through llama-cpp-python")
        rubric: str = Field(RUBRIC, description="what the judge is told to judge")
        retries: int = Field(3, description="asks per answer before giving up")
        timeout: float = Field(60.0, description="seconds per request to the endpoint")
        max_tokens: int = Field(256, description="tokens the judge may answer with")
        n_ctx: int = Field(4096, description="context size of the local GGUF judge")

        @model_validator(mode="after")
        def _one_judge(self):
            if bool(self.endpoint) == bool(self.gguf):
                raise ValueError("set exactly one of endpoint (OpenAI-compatible URL) or gguf (a local file)")
            return self

    # --- asking ------------------------------------------------------------------------

    def _where(self) -> str:
        return self.config.endpoint or self.config.gguf

    def _chat(self, messages: list[dict]) -> str:
        if self.config.endpoint:
            return self._chat_http(messages)
        return self._chat_gguf(messages)

    def _chat_http(self, messages: list[dict]) -> str:
        import requests

        headers = {}
        if self.config.api_key_env and os.environ.get(self.config.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.config.api_key_env]}"
        resp = requests.post(f"{self.config.endpoint.rstrip('/')}/chat/completions", headers=headers,
                             timeout=self.config.timeout,
                             json={"model": self.config.model, "messages": messages, "temperature": 0,
                                   "seed": 0, "max_tokens": self.config.max_tokens})
        resp.raise_for_status()
        return resp.json()["choices"][0]["message"]["content"] or ""

    def _chat_gguf(self, messages: list[dict]) -> str:
        if self._llama is None:
            self._llama = open_llama(self.config.gguf, n_ctx=self.config.n_ctx)
        out = self._llama.create_chat_completion(messages=messages, temperature=0.0, seed=0,
                                                 max_tokens=self.config.max_tokens)
        return out["choices"][0]["message"]["content"] or ""

    def ask(self, messages: list[dict], pattern: re.Pattern) -> str:
        """The judge's verdict token; retried on errors and unreadable replies, then a clear error."""
        last = ""
        for attempt in range(self.config.retries + 1):
            try:
                reply = self._chat(messages)
                found = pattern.findall(reply)
                if found:
                    return found[-1].upper()
                last = f"unparseable reply {reply[:80]!r}"
            except Exception as e:  # network, HTTP status, malformed JSON, llama.cpp
                if isinstance(e, FtctlError):
                    raise
                last = f"{type(e).__name__}: {str(e)[:120]}"
            if attempt < self.config.retries:
                time.sleep(min(0.2 * 2 ** attempt, 2.0))
        raise JudgeError(f"llm_judge ({self._where()}) failed after {self.config.retries + 1} attempts: {last}",
                         hint="check that the judge is running and follows the reply format; "
                              "no report was written")

    # --- scoring -----------------------------------------------------------------------

    def _question(self, ex, ref) -> str:
        text = f"{self.config.rubric}\n\n[Question]\n{ex.prompt}\n"
        if ref:
            text += f"\n[Reference answer]\n{ref}\n"
        return text

    def score(self, predictions, references, examples, backend=None):
        out = []
        for pred, ref, ex in zip(predictions, references, examples):
            prompt = (self._question(ex, ref) + f"\n[Answer]\n{pred}\n\n"
                      "Rate the answer from 1 (useless) to 10 (perfect). End with a line `SCORE: <n>`.")
            n = int(self.ask([{"role": "user", "content": prompt}], _SCORE))
            out.append((n - 1) / 9)
        return out

    def judge_pair(self, preds_a, preds_b, references, examples) -> list[tuple[float, float]]:
        """Per example (share of A, share of B), judged in both orders."""
        out = []
        for pa, pb, ref, ex in zip(preds_a, preds_b, references, examples):
            a_points = 0.0
            for first, second, a_is_first in ((pa, pb, True), (pb, pa, False)):
                prompt = (self._question(ex, ref) + f"\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
                          "Which answer is better? End with a line `WINNER: A`, `WINNER: B` or `WINNER: TIE`.")
                w = self.ask([{"role": "user", "content": prompt}], _WINNER)
                if w == "TIE":
                    a_points += 0.5
                elif (w == "A") == a_is_first:
                    a_points += 1.0
            out.append((a_points / 2, 1 - a_points / 2))
        return out
