"""What the SQL sources (postgres, sqlite) share: the mapping, the query, rows -> Examples.

Two ways to map a team's schema: a table mapping (``table`` plus column names; ratings may
live in a joined ``feedback_table``) or a full ``query`` with named parameters whose columns
carry the mapping's names. Rows are either messages (``role``/``content``, grouped by
conversation: each assistant message becomes one Example with the turns before it) or
interactions (``prompt``/``response`` columns). Identifiers are quoted by the driver's own
quoting, values are always bound parameters, and the database is only ever read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from pydantic import Field, model_validator

from ftctl.api import Example, PluginConfig, ROLES, Reject, Source
from ftctl_plugins.sources.common import RowError, number, parse_time, shape, text

# mapping key -> output column name (what a custom ``query`` must call its columns)
MAPPED = ("id", "conversation_id", "role", "content", "prompt", "response", "rating", "reward",
          "feedback_type", "correction", "agent", "created_at", "served_model")
FEEDBACK = ("rating", "reward", "feedback_type", "correction")
_RATINGS = {i: float(i) for i in range(1, 6)}  # the common ratings, looked up (float() and a range check cost more)


class SqlConfig(PluginConfig):
    table: str | None = Field(None, description="table (or schema.table) of messages or interactions")
    query: str | None = Field(None, description="full SELECT with named parameters; columns named as the mapping keys")
    params: dict[str, Any] = Field({}, description="values for the query's named parameters")
    where: dict[str, Any] = Field({}, description="column: value equality filters (bound parameters)")
    id: str = Field("id", description="column with the row's primary key")
    conversation_id: str | None = Field("conversation_id", description="column with the conversation id")
    role: str | None = Field("role", description="column with the message role (one row per message)")
    content: str | None = Field("content", description="column with the message text")
    prompt: str | None = Field(None, description="column with the prompt (with response: one row per interaction)")
    response: str | None = Field(None, description="column with the answer (with prompt: one row per interaction)")
    rating: str | None = Field("rating", description="column with a 1..5 rating")
    reward: str | None = Field(None, description="column with a -1..+1 reward")
    feedback_type: str | None = Field(None, description="column with the feedback type")
    correction: str | None = Field(None, description="column with a user's corrected answer")
    agent: str | None = Field(None, description="column with the agent type")
    created_at: str | None = Field("created_at", description="column with the event time (the watermark)")
    served_model: str | None = Field(None, description="the model id that answered (deploy serves `model@vX.Y`)")
    feedback_table: str | None = Field(None, description="ratings in a joined table")
    feedback_key: str = Field("message_id", description="the feedback table's column referencing id")

    @model_validator(mode="after")
    def _one_way(self):
        if bool(self.table) == bool(self.query):
            raise ValueError("set exactly one of `table` or `query`")
        if self.query and (self.where or self.feedback_table):
            raise ValueError("`where` and `feedback_table` go with `table`; put them in your `query`")
        if bool(self.prompt) != bool(self.response):
            raise ValueError("set both `prompt` and `response` columns, or neither")
        return self

    @property
    def interactions(self) -> bool:
        return bool(self.prompt)

    def columns(self) -> dict[str, str]:
        """Output name -> source column, for the keys this mapping uses."""
        skip = {"role", "content"} if self.interactions else {"prompt", "response"}
        return {k: getattr(self, k) for k in MAPPED if k not in skip and getattr(self, k)}


def build_query(c: SqlConfig, ident: Callable[[str], str], param: Callable[[str], str],
                since: str | None) -> tuple[str, dict[str, Any]]:
    """The SELECT (as text, identifiers already quoted by ``ident``) and its bound values."""
    cols = c.columns()
    order_cols = [k for k in ("conversation_id", "created_at", "id") if k in cols]
    params: dict[str, Any] = {}
    if c.query:
        inner = c.query.strip().rstrip(";")
        params.update(c.params)
        select = f"SELECT * FROM ({inner}) AS ftctl_q"
        col = lambda k: ident(k)  # noqa: E731 - the query already names its columns
    else:
        m, f = ident("ftctl_m"), ident("ftctl_f")
        src = lambda k: f"{f if c.feedback_table and k in FEEDBACK else m}.{ident(cols[k])}"  # noqa: E731
        # every mapping key, in MAPPED order (NULL where unmapped): rows arrive in the shape
        # RowsToExamples unpacks, with no per-row reordering
        select = "SELECT " + ", ".join(f"{src(k) if k in cols else 'NULL'} AS {ident(k)}" for k in MAPPED)
        select += f" FROM {table_ident(c.table, ident)} AS {m}"
        if c.feedback_table:
            select += (f" LEFT JOIN {table_ident(c.feedback_table, ident)} AS {f}"
                       f" ON {f}.{ident(c.feedback_key)} = {m}.{ident(c.id)}")
        col = src
    conds = []
    for i, (column, value) in enumerate(c.where.items()):
        prefix = "" if c.query else f"{ident('ftctl_m')}."
        conds.append(f"{prefix}{ident(column)} = {param(f'ftctl_w{i}')}")
        params[f"ftctl_w{i}"] = value
    mark = "created_at" if "created_at" in cols else "id"
    if since is not None:
        conds.append(f"{col(mark)} > {param('ftctl_since')}")
        params["ftctl_since"] = parse_time(since) if mark == "created_at" else since
    sql = select + (" WHERE " + " AND ".join(conds) if conds else "")
    sql += " ORDER BY " + ", ".join(col(k) for k in order_cols)
    return sql, params


def table_ident(name: str, ident: Callable[[str], str]) -> str:
    return ".".join(ident(part) for part in name.split("."))


class RowsToExamples:
    """Turn mapped rows (tuples, with their column names) into Examples; remembers the newest
    watermark value.

    The per-row work is kept to what Python must do (about a microsecond: a tuple unpacked, two
    messages and one Example built positionally): this loop sets the read path's pace.
    """

    def __init__(self, c: SqlConfig, source: str, table: str):
        self.c, self.source, self.table = c, source, table
        self.mark = "created_at" if "created_at" in c.columns() else "id"
        self.newest: Any = None

    def watermark(self) -> str | None:
        if self.newest is None:
            return None
        return self.newest.isoformat() if isinstance(self.newest, datetime) else str(self.newest)

    def __call__(self, rows: Iterable[Sequence[Any]], names: Sequence[str],
                 aware: bool = False) -> Iterator[Example | Reject]:
        """``rows`` with the columns ``names`` (any of MAPPED, in any order; the others are None).
        ``aware``: every created_at is None or a datetime with its zone (the driver loads a
        timestamptz column so), and is not checked row by row."""
        layout = _layout(names)
        if layout is not None:
            rows = map(layout, rows)
        interactions, by_time = self.c.interactions, self.mark == "created_at"
        source, prefix, conv_prefix, newest = self.source, f"{self.table}:id=", f"{self.source}:", self.newest
        # Example(...) is type.__call__ -> __new__ -> __init__ through C, which copies the twelve
        # arguments; __new__ then the dataclass's own __init__ called from Python is the same
        # work for ~40 ns less (Example has neither its own __new__ nor a metaclass)
        new, init, ratings = Example.__new__, Example.__init__, _RATINGS.get
        context: list[dict[str, str]] = []
        conv_now: Any = object()
        try:
            for rid, conv, role, content, prompt, response, rating, reward, ft, correction, agent, created, served in rows:
                where = f"{prefix}{rid}"
                try:
                    if not aware and created is not None and (created.__class__ is not datetime or created.tzinfo is None):
                        created = parse_time(created)
                    mark = created if by_time else rid
                    if mark is not None and (newest is None or mark > newest):
                        newest = mark
                    if interactions:
                        if prompt.__class__ is not str or not prompt or prompt.isspace():
                            _text(prompt, "prompt")
                        if response.__class__ is not str:  # a blank one is an answer (sources.common.text)
                            text(response, "response", required=True, blank=True)
                        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
                    else:
                        if conv != conv_now:
                            conv_now, context = conv, []
                        if role not in ROLES:
                            raise RowError("bad_role" if role is not None else "missing_field:role",
                                           f"{shape(role)}, not one of {', '.join(ROLES)}" if role is not None else "")
                        msg = {"role": role, "content": text(content, "content", required=True, blank=True) if role == "assistant"
                               else _text(content, "content")}
                        if role != "assistant":
                            context.append(msg)
                            continue
                        if not any(m["role"] == "user" for m in context):
                            context.append(msg)
                            raise RowError("missing_field:user_message", "an assistant turn with no user turn before it")
                        messages = [*context, msg]
                        context.append(msg)
                    # positional, in Example's field order (tests/collect/test_postgres.py holds it): a
                    # third of the cost of keywords on this path
                    ex = new(Example)
                    init(ex, messages, source, where, f"{conv_prefix}{conv}" if conv is not None else None,
                         (ratings(rating) if rating.__class__ is int else None) or number(rating, "rating", 1, 5),
                         None if reward is None else number(reward, "reward", -1, 1),
                         str(ft).strip().lower() if ft is not None else None, correction or None, agent, created,
                         str(served) if served is not None and served != "" else None,
                         {})  # meta: a literal costs less than the dataclass's default_factory call
                    yield ex
                except RowError as e:
                    yield Reject(source, where, e.reason, e.detail)
        finally:
            self.newest = newest


def _layout(names: Sequence[str]) -> Callable[[Sequence[Any]], tuple] | None:
    """A function putting a row's values in MAPPED order (None for a column it lacks), or None
    when the row is in that order already."""
    names = list(names)
    if names == list(MAPPED):
        return None
    pick = itemgetter(*[names.index(k) if k in names else len(names) for k in MAPPED])
    return lambda row: pick((*row, None))


def _text(value: Any, key: str) -> str:
    if value is None or (isinstance(value, str) and (not value or value.isspace())):
        raise RowError(f"missing_field:{key}")
    if not isinstance(value, str):
        raise RowError(f"wrong_type:{key}", shape(value))
    return value


class SqlSource(Source):
    """Base of the SQL sources: ``read`` sets ``_rows``, which knows the watermark."""

    _rows: RowsToExamples | None = None

    def watermark(self) -> str | None:
        return self._rows.watermark() if self._rows else None
