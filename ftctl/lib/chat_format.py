"""Chat-format training rows: render with the base's chat template, loss only on assistant turns.

Hand-written because no library does all of it for arbitrary templates: transformers'
``return_assistant_tokens_mask`` needs a ``{% generation %}`` block most templates (SmolLM2's
included) lack, and TRL's completion-only collators mask by token id, which hides the EOS token
when pad == eos. Here the assistant spans come from rendering prefixes of the conversation and
mapping character spans to tokens (offsets), so any template that renders prefixes stably works.

Rows are plain lists of ints; torch is only needed by :class:`Collator`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ftctl.errors import FtctlError

IGNORE = -100
# pad candidates that exist in common vocabularies and are never trained on
_PAD_CANDIDATES = ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "<unk>")


class ChatFormatError(FtctlError):
    """The tokenizer cannot render conversations the way training needs."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE outside assistant turns

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


@dataclass
class EncodeReport:
    """What happened to each conversation: used, or skipped with a countable reason."""

    used: int = 0
    skipped: Counter = field(default_factory=Counter)
    lengths: list[int] = field(default_factory=list)  # every rendered length (for the histogram)

    def to_dict(self) -> dict:
        return {"used": self.used, "skipped": dict(self.skipped)}


def check_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatFormatError(
            "the base model's tokenizer has no chat template",
            hint="set train.lora.chat_template to a Jinja chat template in ftctl.yaml, or use an instruct base",
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ChatFormatError("the base model has no fast tokenizer (needed for assistant-only loss)",
                              hint="use a base with a tokenizer.json")


def ensure_pad(tokenizer) -> int:
    """Give the tokenizer a pad token that is not EOS (so EOS is always learned)."""
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return tokenizer.pad_token_id
    vocab = tokenizer.get_vocab()
    for tok in (tokenizer.unk_token, *_PAD_CANDIDATES):
        if tok and tok in vocab and vocab[tok] != eos:
            tokenizer.pad_token = tok
            return vocab[tok]
    raise ChatFormatError("the tokenizer has no token usable as padding other than EOS",
                          hint="use a base whose tokenizer defines a pad or unk token")


def render(tokenizer, messages: list[dict], generation_prompt: bool = False, tools: list[dict] | None = None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                         add_generation_prompt=generation_prompt)


# what a message keeps for the template: tool calls (assistant) and which call a tool answers
MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


def uses_tools(messages: list[dict], tools: list[dict] | None = None) -> bool:
    if tools:
        return True
    for m in messages:  # a loop, not any() over a generator: collect asks this of every row
        if m.get("tool_calls") or m.get("role") == "tool":
            return True
    return False


_PROBE_VALUE = "ftctl-probe-7f3a"


def renders_tool_calls(template: str) -> bool:
    """Whether a chat template writes an assistant's tool call into the text (its arguments'
    values appear), rendered as transformers renders it. A template that ignores tool_calls
    would train the model on a call it never sees: such rows are rejected, not trained on."""
    from transformers.utils.chat_template_utils import render_jinja_template

    probe = [{"role": "user", "content": "probe"},
             {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                 "name": "ftctl_probe", "arguments": {"value": _PROBE_VALUE}}}]}]
    tools = [{"type": "function", "function": {"name": "ftctl_probe", "description": "probe", "parameters": {
        "type": "object", "properties": {"value": {"type": "string"}}}}}]
    try:
        rendered, _ = render_jinja_template(conversations=[probe], tools=tools, chat_template=template)
    except Exception:  # a template that raises on tool calls (raise_exception) does not support them
        return False
    return _PROBE_VALUE in rendered[0]


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character span of each assistant turn (with its end marker)."""
    text = render(tokenizer, messages, tools=tools)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        start = len(render(tokenizer, messages[:i], generation_prompt=True, tools=tools)) if i else 0
        upto = render(tokenizer, messages[: i + 1], tools=tools)
        if not text.startswith(upto) or start > len(upto):
            raise ChatFormatError("the chat template does not render conversation prefixes stably",
                                  hint="assistant-only loss needs a template where earlier turns do not change")
        spans.append((start, len(upto)))
    return text, spans


def encode(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> Encoded | None:
    """Token ids + labels (assistant tokens up to and including EOS); None without an assistant turn.
    An assistant's tool calls are assistant tokens too (rendered by the template, with ``tools``)."""
    msgs = [{k: m[k] for k in MESSAGE_KEYS if k in m} for m in messages]
    text, spans = assistant_spans(tokenizer, msgs, tools)
    if not spans:
        return None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    eos = tokenizer.eos_token_id
    for a, b in spans:
        in_span = [j for j, (s, _) in enumerate(offsets) if a <= s < b]
        for j in in_span:
            labels[j] = ids[j]
            if ids[j] == eos:  # the end of the turn: what the template adds after it is not the answer
                break
    if eos not in [t for t in labels if t != IGNORE][-1:]:
        # templates whose assistant turn does not end with EOS: append it so the model learns to stop
        last = max(j for j, t in enumerate(labels) if t != IGNORE)
        ids.insert(last + 1, eos)
        labels.insert(last + 1, eos)
    return Encoded(ids, labels)


def encode_all(tokenizer, conversations, max_length: int) -> tuple[list[Encoded], EncodeReport]:
    """Encode every conversation; too long ones are skipped (a truncated answer never ends in EOS)."""
    return select((encode(tokenizer, messages) for messages in conversations), max_length)


def select(encoded, max_length: int) -> tuple[list[Encoded], EncodeReport]:
    """The encoded conversations that fit in ``max_length``; the others counted by reason (None:
    nothing to learn; too long: skipped whole, since a truncated answer never ends in EOS)."""
    out, report = [], EncodeReport()
    for enc in encoded:
        if enc is None:
            report.skipped["no_assistant_turn"] += 1
            continue
        report.lengths.append(len(enc))
        if len(enc) > max_length:
            report.skipped["longer_than_max_length"] += 1
            continue
        out.append(enc)
        report.used += 1
    return out, report


def pack(rows: list[Encoded], max_length: int) -> list[list[Encoded]]:
    """First-fit-decreasing bins of at most ``max_length`` tokens (each bin becomes one row)."""
    bins: list[list[Encoded]] = []
    room: list[int] = []
    for r in sorted(rows, key=len, reverse=True):
        for i, free in enumerate(room):
            if len(r) <= free:
                bins[i].append(r)
                room[i] -= len(r)
                break
        else:
            bins.append([r])
            room.append(max_length - len(r))
    return bins


def to_features(segments: list[Encoded]) -> dict[str, list[int]]:
    """One training row: segments concatenated, position ids restarting at each segment.

    transformers turns restarting position ids (with no attention mask) into a block-diagonal
    causal mask, so packed conversations never attend to each other.
    """
    ids, labels, pos = [], [], []
    for s in segments:
        ids += s.input_ids
        labels += s.labels
        pos += list(range(len(s)))
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


class Collator:
    """One micro-batch of conversations -> right-padded rows (plus each row's real length).

    The sampler decides which conversations share an optimizer step (``batch_size`` of them, packed
    or not); with ``pack_to`` the collator only puts those conversations into fewer rows of at
    most ``pack_to`` tokens. So packing changes the number of rows, never the optimisation.
    Pads continue the last segment's positions: causal attention means no real token ever sees
    them, and the model keeps its fast unmasked path. Counts real tokens.
    """

    def __init__(self, pad_id: int, pack_to: int | None = None):
        self.pad_id = pad_id
        self.pack_to = pack_to
        self.tokens = 0
        self.rows_made = 0

    def rows(self, features: list[dict]) -> list[dict]:
        if self.pack_to is None:
            return [f if "position_ids" in f else to_features([Encoded(f["input_ids"], f["labels"])])
                    for f in features]
        segments = [Encoded(f["input_ids"], f["labels"]) for f in features]
        return [to_features(b) for b in pack(segments, max(self.pack_to, max(map(len, segments))))]

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows = self.rows(features)
        self.rows_made += len(rows)
        width = max(len(f["input_ids"]) for f in rows)
        batch = {"input_ids": [], "labels": [], "position_ids": [], "lengths": []}
        for f in rows:
            n = len(f["input_ids"])
            self.tokens += n
            extra = width - n
            batch["input_ids"].append(f["input_ids"] + [self.pad_id] * extra)
            batch["labels"].append(f["labels"] + [IGNORE] * extra)
            last = f["position_ids"][-1] + 1
            batch["position_ids"].append(f["position_ids"] + list(range(last, last + extra)))
            batch["lengths"].append(n)
        out = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        # with a KV cache transformers skips packed-sequence detection: conversations would mix
        out["use_cache"] = False
        return out


def model_inputs(batch: dict) -> dict:
    """The batch without the keys only the loss needs (what a plain ``model(**x)`` accepts)."""
    return {k: v for k, v in batch.items() if k not in ("labels", "lengths")}


def mark_trained(tokenizer, enc: Encoded, start: str = "[[", end: str = "]]") -> str:
    """The rendered example with each trained (loss-bearing) span wrapped in markers."""
    out, run, trained = [], [], False
    for tok, lab in zip(enc.input_ids, enc.labels):
        if (lab != IGNORE) != trained and run:
            text = tokenizer.decode(run)
            out.append(f"{start}{text}{end}" if trained else text)
            run = []
        trained = lab != IGNORE
        run.append(tok)
    if run:
        text = tokenizer.decode(run)
        out.append(f"{start}{text}{end}" if trained else text)
    return "".join(out)


def histogram(lengths: list[int], max_length: int, buckets: int = 8) -> list[tuple[int, int, int]]:
    """(low, high, count) buckets up to max(max_length, longest)."""
    if not lengths:
        return []
    top = max(max(lengths), max_length)
    width = top // buckets + 1  # the longest length falls inside the last bucket
    counts = Counter(min(n // width, buckets - 1) for n in lengths)
    return [(i * width, (i + 1) * width - 1, counts.get(i, 0)) for i in range(buckets)]
