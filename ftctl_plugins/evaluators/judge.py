"""LLM-as-judge: a local GGUF judge (llama.cpp) or any OpenAI-compatible endpoint.

Alone (``ftctl eval v1.1``) the judge grades each answer 1..10 against the rubric (scaled to
0..1). In a comparison it judges the two answers side by side, twice with the positions
swapped, so a judge's bias for the first (or second) slot cancels out: each example gives A and
B a share of one point (1 = won both orders, 0.5 = a tie or a split decision).

Rubrics: ``rubric_file`` names a built-in (correctness, completeness, relevance: rubrics/*.md)
or a text file of the workspace; ``rubric`` is the inline default. A reply that cannot be read
is asked again (``retries``), then the example is *unjudged*: no score, counted and shown
(``details``), never a guess. A judge that cannot be reached is an error (no report). With
``json_schema: true`` the reply is constrained to ``{"score": 1..10}`` / ``{"winner": ...}``
by llama.cpp's JSON-schema grammar (llama-server takes it, as a remote server or as the local
judge: the GGUF backend's embedded llama-server), which makes even a small local judge readable.
``parallel`` questions are asked at once (a local judge decodes them together in its slots). ``human_key`` names an Example.meta field with a
human's 1..10 grade: the details then give the judge's agreement with it (Spearman's rho and
Cohen's quadratic-weighted kappa).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from pydantic import Field, model_validator

from ftctl.api import ConfigError, Evaluator, FtctlError, GGUFBackend, PluginConfig

RUBRIC = ("Judge how helpful, correct and concise the answer is for the user's question. "
          "A reference answer, when given, shows what a good answer contains.")
_SCORE = re.compile(r"SCORE:\s*(10|[1-9])\b", re.I)
_WINNER = re.compile(r"WINNER:\s*(A|B|TIE)\b", re.I)
RUBRICS = Path(__file__).parent / "rubrics"  # correctness.md, completeness.md, relevance.md
_SCHEMAS = {  # what json_schema asks llama.cpp's grammar to allow, per question
    "score": {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
              "required": ["score"]},
    "winner": {"type": "object", "properties": {"winner": {"enum": ["A", "B", "TIE"]}}, "required": ["winner"]},
}


class JudgeError(FtctlError):
    """The judge could not be reached or kept answering in a shape we cannot read."""


class LlmJudge(Evaluator):
    name = "llm_judge"
    needs_reference = False
    pairwise = True  # in a comparison: judge_pair, both orders
    _llama = None  # the local GGUF judge, loaded on first use

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.rubric = self._rubric(config.rubric_file) if config.rubric_file else config.rubric
        self._last: dict = {}  # what the last score / judge_pair run judged (for details)
        self._loading = threading.Lock()  # questions asked at once load the local judge once

    def _rubric(self, name: str) -> str:
        builtin = RUBRICS / f"{name}.md"
        path = builtin if builtin.is_file() else Path(name).expanduser()
        path = path if path.is_absolute() else self.ctx.root / path
        if not path.is_file():
            have = ", ".join(sorted(p.stem for p in RUBRICS.glob("*.md")))
            raise ConfigError(f"eval.llm_judge.rubric_file {name!r}: no such rubric ({path})",
                              hint=f"built in: {have}; or a text file in the workspace")
        return path.read_text().strip()

    class Config(PluginConfig):
        endpoint: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")
        model: str = Field("judge", description="the model name sent to the endpoint")
        api_key_env: str | None = Field(None, description="the *name* of the variable holding the key, never the key")
        gguf: str | None = Field(None, description="or a local GGUF judge (llama.cpp's server, in this process)")
        rubric: str = Field(RUBRIC, description="what the judge is told to judge")
        rubric_file: str | None = Field(None, description="correctness, completeness, relevance (built in) or a text file: replaces rubric")
        retries: int = Field(3, ge=0, le=10, description="asks again after an unreadable reply, then the example is unjudged")
        json_schema: bool = Field(False, description="constrain replies to JSON with llama.cpp's schema grammar")
        human_key: str | None = Field(None, description="Example.meta key with a human's 1..10 grade: measure agreement")
        timeout: float = Field(60.0, description="seconds per request to the endpoint")
        max_tokens: int = Field(256, description="tokens the judge may answer with")
        n_ctx: int = Field(4096, description="context size of the local GGUF judge (per question asked at once)")
        parallel: int = Field(1, ge=1, le=64, description="questions asked at once (a local judge: its slots)")

        @model_validator(mode="after")
        def _one_judge(self):
            if bool(self.endpoint) == bool(self.gguf):
                raise ValueError("set exactly one of endpoint (OpenAI-compatible URL) or gguf (a local file)")
            return self

    # --- asking ------------------------------------------------------------------------

    def _where(self) -> str:
        return self.config.endpoint or self.config.gguf

    def _chat(self, messages: list[dict], schema: dict | None = None) -> str:
        if self.config.endpoint:
            return self._chat_http(messages, schema)
        return self._chat_gguf(messages, schema)

    def _body(self, messages: list[dict], schema: dict | None) -> dict:
        return {"model": self.config.model, "messages": messages, "temperature": 0, "seed": 0,
                "max_tokens": self.config.max_tokens, **_response_format(schema)}

    def _chat_http(self, messages: list[dict], schema: dict | None = None) -> str:
        import requests

        headers = {}
        if self.config.api_key_env and os.environ.get(self.config.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.config.api_key_env]}"
        resp = requests.post(f"{self.config.endpoint.rstrip('/')}/chat/completions", headers=headers,
                             timeout=self.config.timeout, json=self._body(messages, schema))
        resp.raise_for_status()
        return resp.json()["choices"][0]["message"]["content"] or ""

    def _chat_gguf(self, messages: list[dict], schema: dict | None = None) -> str:
        with self._loading:  # the eval's GGUF backend: llama-server's slots, the same request body
            if self._llama is None:
                self._llama = GGUFBackend(self.config.gguf, n_ctx=self.config.n_ctx, parallel=self.config.parallel)
        out = self._llama.request(self._body(messages, schema))
        if "error" in out:
            raise RuntimeError(str(out["error"].get("message") if isinstance(out["error"], dict) else out["error"]))
        return out["choices"][0]["message"]["content"] or ""

    def ask(self, messages: list[dict], pattern: re.Pattern, field: str) -> str | None:
        """The judge's verdict token, or None when every reply was unreadable (unjudged).
        Transport errors (down, HTTP status, a body that is not the API's JSON) are retried too,
        then raised: a judge that cannot be reached must not pass for a judge that abstains."""
        schema = _SCHEMAS[field] if self.config.json_schema else None
        last, unreadable = "", False
        for attempt in range(self.config.retries + 1):
            try:
                reply = self._chat(messages, schema)
                found = _read(reply, pattern, field if schema else None)
                if found:
                    return found
                last, unreadable = f"unparseable reply {reply[:80]!r}", True
            except Exception as e:  # network, HTTP status, malformed JSON, llama.cpp
                if isinstance(e, FtctlError):
                    raise
                last, unreadable = f"{type(e).__name__}: {str(e)[:120]}", False
            if attempt < self.config.retries:
                time.sleep(min(0.2 * 2 ** attempt, 2.0))
        if unreadable:
            return None
        raise JudgeError(f"llm_judge ({self._where()}) failed after {self.config.retries + 1} attempts: {last}",
                         hint="check that the judge is running; no report was written")

    # --- scoring -----------------------------------------------------------------------

    def _question(self, ex, ref) -> str:
        text = f"{self.rubric}\n\n[Question]\n{ex.prompt}\n"
        if ref:
            text += f"\n[Reference answer]\n{ref}\n"
        return text

    def _ending(self, field: str) -> str:
        if self.config.json_schema:
            return ('Reply with JSON: {"score": <1..10>}.' if field == "score"
                    else 'Reply with JSON: {"winner": "A"}, {"winner": "B"} or {"winner": "TIE"}.')
        return ("End with a line `SCORE: <n>`." if field == "score"
                else "End with a line `WINNER: A`, `WINNER: B` or `WINNER: TIE`.")

    def _map(self, fn, items: list) -> list:
        """``fn`` over ``items``, ``parallel`` at a time, in order (a JudgeError stops it)."""
        if self.config.parallel == 1 or len(items) < 2:
            return [fn(x) for x in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.config.parallel, thread_name_prefix="ftctl-judge") as pool:
            return list(pool.map(fn, items))

    def score(self, predictions, references, examples, backend=None):
        def grade(item) -> int | None:
            pred, ref, ex = item
            prompt = (self._question(ex, ref) + f"\n[Answer]\n{pred}\n\n"
                      "Rate the answer from 1 (useless) to 10 (perfect). " + self._ending("score"))
            n = self.ask([{"role": "user", "content": prompt}], _SCORE, "score")
            return None if n is None else int(n)

        grades = self._map(grade, list(zip(predictions, references, examples)))
        self._last = {"grades": grades, "humans": [self._human(ex) for ex in examples]}
        return [None if n is None else (n - 1) / 9 for n in grades]

    def judge_pair(self, preds_a, preds_b, references, examples) -> list[tuple[float | None, float | None]]:
        """Per example (share of A, share of B), judged in both orders; (None, None) when either
        order went unjudged (half a verdict is no verdict)."""
        def pair(item) -> tuple[float | None, float | None]:
            pa, pb, ref, ex = item
            a_points = 0.0
            for first, second, a_is_first in ((pa, pb, True), (pb, pa, False)):
                prompt = (self._question(ex, ref) + f"\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
                          "Which answer is better? " + self._ending("winner"))
                w = self.ask([{"role": "user", "content": prompt}], _WINNER, "winner")
                if w is None:
                    return None, None
                if w == "TIE":
                    a_points += 0.5
                elif (w == "A") == a_is_first:
                    a_points += 1.0
            return a_points / 2, 1 - a_points / 2

        out = self._map(pair, list(zip(preds_a, preds_b, references, examples)))
        self._last = {"pairs": len(out), "unjudged": sum(a is None for a, _ in out)}
        return out

    def _human(self, ex) -> float | None:
        if not self.config.human_key:
            return None
        try:
            return float(ex.meta[self.config.human_key])
        except (KeyError, TypeError, ValueError):
            return None

    def details(self, predictions, references, examples):
        """Judged and unjudged counts of the last run; with human grades, the agreement."""
        if "pairs" in self._last:
            return {"judged": self._last["pairs"] - self._last["unjudged"], "unjudged": self._last["unjudged"]}
        grades, humans = self._last.get("grades", []), self._last.get("humans", [])
        out = {"judged": sum(g is not None for g in grades), "unjudged": sum(g is None for g in grades)}
        both = [(g, h) for g, h in zip(grades, humans) if g is not None and h is not None]
        if self.config.human_key:
            out["agreement"] = agreement([g for g, _ in both], [h for _, h in both])
        return out


def agreement(judge: list[float], human: list[float]) -> dict:
    """Spearman's rank correlation and Cohen's quadratic-weighted kappa (on whole grades 1..10)
    between the judge and the human grades of the same examples."""
    out: dict = {"n": len(judge), "spearman": None, "spearman_p": None, "kappa": None}
    if len(judge) < 3 or len(set(judge)) < 2 or len(set(human)) < 2:
        return out  # no variation on one side: neither measure is defined
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    rho = spearmanr(judge, human)
    out.update(spearman=round(float(rho.statistic), 4), spearman_p=round(float(rho.pvalue), 4),
               kappa=round(float(cohen_kappa_score([round(x) for x in judge], [round(x) for x in human],
                                                   weights="quadratic")), 4))
    return out


def _response_format(schema: dict | None) -> dict:
    """llama-server's OpenAI-compatible way to constrain a reply to a JSON schema."""
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}} \
        if schema else {}


def _read(reply: str, pattern: re.Pattern, field: str | None) -> str | None:
    """The verdict token in a reply: the JSON field when a schema was asked for (falling back to
    the text pattern), else the last match of the pattern."""
    if field:
        try:
            value = json.loads(reply).get(field)
            if value is not None and pattern.search(f"{'SCORE' if field == 'score' else 'WINNER'}: {value}"):
                return str(value).upper()
        except (ValueError, AttributeError):
            pass
    found = pattern.findall(reply)
    return found[-1].upper() if found else None
