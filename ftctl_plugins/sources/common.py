"""What every source shares: turning one input row into an Example, or a Reject with a reason.

A row is a flat mapping (a JSONL event, a CSV row, a database row). Reasons are short and
countable (``missing_field:response``, ``rating_out_of_range``, ...): they become the data card's
``rejected`` counts and the lines of rejects.jsonl. An answer that is there but blank is not
missing: the model said nothing, the user may have rated that, and a canary or drift check must
count it (ftctl.feedback); curation keeps it out of training (``empty_answer``). A detail
describes the value's shape (its type, its length), never the value: rejects.jsonl is kept with
the snapshot, and a value a row holds in the wrong place may be PHI (a member number typed into
a rating field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftctl.api import ROLES, Example, RowError, parse_time  # noqa: F401  (RowError: for the sources)
from ftctl_plugins.sources.formats import openai_messages, shape, tools_of  # noqa: F401  (shape: for the sources)
from ftctl_plugins.sources.rewards import TABLE  # every type the built-in reward table knows is a feedback type

FEEDBACK_TYPES = {"thumbs_up", "thumbs_down", "correction", "validation", "rating", "reward", "flag", *TABLE}


def number(value: Any, field: str, low: float, high: float) -> float | None:
    if type(value) is int and low <= value <= high:  # the common case, first
        return float(value)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowError(f"wrong_type:{field}", shape(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RowError(f"wrong_type:{field}", shape(value)) from None
    if not (low <= x <= high):  # also catches NaN
        raise RowError(f"{field}_out_of_range", f"{shape(value)}, not in {low:g}..{high:g}")
    return x


def text(value: Any, field: str, required: bool = False, blank: bool = False) -> str | None:
    """``value`` when it is a text; ``blank``: a blank one is kept as it is (a model's answer that
    says nothing is still an answer), else it counts as missing."""
    if value is None or (not blank and isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(f"missing_field:{field}")
        return None
    if not isinstance(value, str):
        raise RowError(f"wrong_type:{field}", shape(value))
    return value


def messages_from(value: Any) -> list[dict[str, Any]]:
    """Validate OpenAI chat-format messages: a list of {role, content} with known roles; an
    assistant's ``tool_calls`` and a tool answer's ``tool_call_id``/``name`` are kept
    (ftctl_plugins.sources.formats has put them in OpenAI's shape)."""
    if not isinstance(value, list) or not value:
        raise RowError("wrong_type:messages" if value else "missing_field:messages")
    out = []
    for m in openai_messages(value):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, Mapping) else None
            raise RowError("unknown_role" if isinstance(role, str) else "bad_message",
                           f"{shape(m)}, role not one of {', '.join(ROLES)}" if isinstance(m, Mapping) else shape(m))
        content = m.get("content")
        if content is None and m.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise RowError("wrong_type:content", shape(content))
        msg: dict[str, Any] = {"role": m["role"], "content": content}
        if m["role"] == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = m["tool_calls"]
        if m["role"] == "tool":
            msg.update({k: str(m[k]) for k in ("tool_call_id", "name") if m.get(k)})
        out.append(msg)
    if not any(m["role"] == "user" for m in out):
        raise RowError("missing_field:user_message")
    return out


def example_from(row: Mapping[str, Any], *, source: str, source_id: str) -> Example:
    """One feedback event -> Example. Accepts ``messages`` (OpenAI chat format),
    ``prompt``/``response`` or ``prompt``/``completion``, plus optional rating, reward,
    feedback_type, correction, agent, created_at, conversation_id, served_model and system."""
    if not isinstance(row, Mapping):
        raise RowError("not_an_object", shape(row))
    if row.get("messages") is not None:
        msgs = messages_from(row["messages"])
    else:
        prompt = text(row.get("prompt"), "prompt", required=True)
        said = text(row.get("response", row.get("completion")), "response", required=not row.get("correction"), blank=True)
        msgs = [{"role": "user", "content": prompt}]
        system = text(row.get("system"), "system")
        if system:
            msgs.insert(0, {"role": "system", "content": system})
        if said is not None and (said.strip() or not row.get("correction")):
            msgs.append({"role": "assistant", "content": said})
    feedback_type = text(row.get("feedback_type"), "feedback_type")
    if feedback_type is not None:
        feedback_type = feedback_type.strip().lower().replace(" ", "_").replace("-", "_")
        if feedback_type not in FEEDBACK_TYPES:
            raise RowError("unknown_feedback_type", f"{shape(feedback_type)}, not one of {', '.join(sorted(FEEDBACK_TYPES))}")
    conv = row.get("conversation_id")
    return Example(
        messages=msgs,
        source=source,
        source_id=source_id,
        conversation_id=str(conv) if conv not in (None, "") else None,
        rating=number(row.get("rating"), "rating", 1, 5),
        reward=number(row.get("reward"), "reward", -1, 1),
        feedback_type=feedback_type,
        correction=text(row.get("correction"), "correction"),
        agent=text(row.get("agent"), "agent"),
        served_model=text(row.get("served_model"), "served_model"),
        created_at=parse_time(row.get("created_at")),
        meta=dict(row["meta"]) if isinstance(row.get("meta"), Mapping) else {},
        tools=_tools(row),
    )


def _tools(row: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    return tools_of(row) or None
