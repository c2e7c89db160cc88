"""The dataset formats users bring from other fine-tuning tools, as ftctl feedback events.

- ``openai``: ``messages`` of ``{role, content}``; content may be a list of parts (text parts are
  joined, other parts are rejected: a text model cannot learn from an image it never sees);
  assistant ``tool_calls`` and ``tool`` answers are kept, with the row's ``tools``.
- ``sharegpt``: ``conversations`` of ``{from, value}`` (human/gpt/system, and LLaMA-Factory's
  function_call/observation), with optional ``system`` and ``tools``.
- ``alpaca``: ``instruction`` + optional ``input`` -> the user turn, ``output`` -> the answer,
  optional ``system`` and ``history`` ([[question, answer], ...], as LLaMA-Factory writes it).
- ``auto``: each row by its keys (``messages``, ``conversations``, ``instruction``), else ftctl's
  own event shape (``prompt``/``response``, feedback fields).

Every other key of a row (rating, reward, created_at, conversation_id, ...) passes through, so a
ShareGPT file with ratings is feedback like any other. Hand-written: the formats are plain JSON
conventions (LLaMA-Factory's ``data/README.md``, Axolotl's ``chat_template`` type), and no library
converts them without loading a whole dataset through its own pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from ftctl.api import RowError

Format = Literal["auto", "openai", "sharegpt", "alpaca", "feedback"]
FORMATS = ("auto", "openai", "sharegpt", "alpaca", "feedback")

# ShareGPT speakers as the tools that write them name them
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "system": "system",
    "function_call": "assistant",  # LLaMA-Factory: the value is the call as JSON
    "observation": "tool", "tool": "tool", "function": "tool",
}


def shape(value: Any) -> str:
    """What a rejected value is, without quoting it (a reject's detail; ftctl_plugins.sources.common): ``str of 12 chars``, ``int``, ``list of 3``."""
    kind = type(value).__name__
    if isinstance(value, (str, bytes)):
        return f"{kind} of {len(value)} chars"
    if isinstance(value, (list, tuple, dict)):
        return f"{kind} of {len(value)}"
    return kind


def detect(row: Mapping[str, Any]) -> str:
    if "messages" in row:
        return "openai"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row:
        return "alpaca"
    return "feedback"


def to_event(row: Any, fmt: str) -> Any:
    """The row as ftctl's feedback event (``messages`` plus the row's other keys)."""
    if not isinstance(row, Mapping):
        return row  # example_from rejects it with the type
    fmt = detect(row) if fmt == "auto" else fmt
    if fmt == "openai":
        if "messages" not in row:
            raise RowError("missing_field:messages", "format openai")
        return row  # common.messages_from flattens parts and checks tool calls (openai_messages)
    if fmt == "sharegpt":
        return _sharegpt(row)
    if fmt == "alpaca":
        return _alpaca(row)
    return row


def openai_messages(value: Any) -> Any:
    """Content parts joined to text; tool calls kept in OpenAI's shape (arguments as objects)."""
    if not isinstance(value, list):
        return value  # example_from names the problem
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            out.append(m)
            continue
        msg = {**m, "content": _flatten(m.get("content"), i)}
        if m.get("tool_calls"):
            msg["tool_calls"] = [_tool_call(c, i) for c in _list(m["tool_calls"], f"messages[{i}].tool_calls")]
            msg["content"] = msg["content"] or ""  # a call with no words: content null in OpenAI's API
        elif m.get("function_call"):  # OpenAI's older single-call form
            msg["tool_calls"] = [_tool_call({"type": "function", "function": m["function_call"]}, i)]
            msg["content"] = msg["content"] or ""
            msg.pop("function_call")
        out.append(msg)
    return out


def _flatten(content: Any, i: int) -> Any:
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
        if kind not in ("text", "input_text", "output_text") or not isinstance(part.get("text"), str):
            raise RowError(f"unsupported_content:{kind}"[:60], f"messages[{i}]: only text parts can be trained on")
        texts.append(part["text"])
    return "\n".join(texts)


def _tool_call(call: Any, i: int) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise RowError("bad_tool_call", f"messages[{i}]: a tool call needs function.name")
    args = fn.get("arguments", {})
    if isinstance(args, str):  # OpenAI sends a JSON string; chat templates render an object
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise RowError("bad_tool_call", f"messages[{i}]: arguments of {fn['name']} are not JSON") from None
    if not isinstance(args, Mapping):
        raise RowError("bad_tool_call", f"messages[{i}]: arguments of {fn['name']} are not an object")
    out = {"type": "function", "function": {"name": fn["name"], "arguments": dict(args)}}
    if call.get("id"):
        out["id"] = str(call["id"])
    return out


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise RowError("bad_tool_call", f"{where} is not a list")
    return value


def _tools(row: Mapping[str, Any]) -> dict[str, Any]:
    tools = tools_of(row)
    return {"tools": tools} if tools else {}


def tools_of(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The row's function schemas in OpenAI's shape ({type: function, function: {...}})."""
    tools = row.get("tools")
    if tools in (None, "", []):
        return []
    if isinstance(tools, str):  # LLaMA-Factory stores them as a JSON string
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise RowError("bad_tools", "tools is not JSON") from None
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise RowError("bad_tools", "tools must be a list of function schemas")
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


def _sharegpt(row: Mapping[str, Any]) -> dict[str, Any]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("missing_field:conversations" if not turns else "wrong_type:conversations")
    msgs: list[dict[str, Any]] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    for i, t in enumerate(turns):
        if not isinstance(t, Mapping):
            raise RowError("bad_message", f"conversations[{i}] is {type(t).__name__}")
        speaker = t.get("from", t.get("role"))
        role = SHAREGPT_ROLES.get(str(speaker).strip().lower()) if speaker is not None else None
        if role is None:
            raise RowError("unknown_role", f"conversations[{i}].from: {shape(speaker)}, not one of "
                                           f"{', '.join(sorted(SHAREGPT_ROLES))}")
        value = t.get("value", t.get("content"))
        if speaker == "function_call":
            call = _parse_call(value, i)
            msgs.append({"role": "assistant", "content": "", "tool_calls": [call]})
            continue
        msgs.append({"role": role, "content": _flatten(value, i)})
    rest = {k: v for k, v in row.items() if k not in ("conversations", "system", "tools")}
    return {**rest, "messages": msgs, **_tools(row)}


def _parse_call(value: Any, i: int) -> dict[str, Any]:
    try:
        call = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        raise RowError("bad_tool_call", f"conversations[{i}]: a function_call value must be JSON") from None
    if not isinstance(call, Mapping):
        raise RowError("bad_tool_call", f"conversations[{i}]: a function_call value must be an object")
    return _tool_call({"function": call}, i)


def _alpaca(row: Mapping[str, Any]) -> dict[str, Any]:
    instruction, extra, output = row.get("instruction"), row.get("input"), row.get("output")
    if not isinstance(instruction, str) or not instruction.strip():
        raise RowError("missing_field:instruction")
    if output is None or (isinstance(output, str) and not output.strip()):
        raise RowError("missing_field:output", "an Alpaca row needs the answer to learn")
    if not isinstance(output, str):
        raise RowError("wrong_type:output", shape(output))
    msgs: list[dict[str, Any]] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("wrong_type:history", "a list of [question, answer] pairs")
    for turn in history:
        if not (isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(x, str) for x in turn)):
            raise RowError("wrong_type:history", "a list of [question, answer] pairs")
        msgs += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt = instruction if not (isinstance(extra, str) and extra.strip()) else f"{instruction}\n\n{extra}"
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    rest = {k: v for k, v in row.items() if k not in ("instruction", "input", "output", "system", "history")}
    return {**rest, "messages": msgs}
