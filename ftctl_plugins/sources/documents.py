"""A directory of text/markdown documents chunked into training examples.

``continuation``: the model learns to continue a passage (the first part is the prompt).
``qa``: each markdown section becomes "What does <doc> say about <heading>?" -> the section.
Files stream one at a time; paragraphs are packed into chunks of at most ``chunk_chars``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from ftctl.api import Example, PluginConfig, Reject, Source
from ftctl_plugins.sources.files import display, expand

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


class DocumentsSource(Source):
    name = "documents"

    class Config(PluginConfig):
        path: str = Field(description="a directory, file or glob of .md/.txt/.rst files")
        style: Literal["continuation", "qa"] = Field("continuation", description="continuation: learn the text; qa: a question per chunk answered by the chunk")
        chunk_chars: int = Field(1500, ge=200, description="characters per chunk (split at paragraph boundaries)")
        min_chars: int = Field(80, ge=1, description="shorter chunks are rejected as too_short")
        agent: str | None = Field(None, description="the agent type the examples get")

    def read(self, since: str | None) -> Iterator[Example | Reject]:
        source = self.source_name
        for path in expand(self.ctx.root, self.config.path, (".md", ".txt", ".rst", ".markdown")):
            where = display(self.ctx.root, path)
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                yield Reject(source, where, "invalid_utf8", str(e)[:120])
                continue
            for n, (heading, body) in enumerate(self._chunks(text, path.stem), 1):
                loc = f"{where}#{n}"
                if len(body) < self.config.min_chars:
                    yield Reject(source, loc, "too_short", f"{len(body)} chars")
                    continue
                if self.config.style == "qa":
                    msgs = [{"role": "user", "content": f"What does {path.stem} say about {heading}?"},
                            {"role": "assistant", "content": body}]
                else:
                    cut = _cut(body)
                    msgs = [{"role": "user", "content": f"Continue this passage from {path.stem}:\n\n{body[:cut]}"},
                            {"role": "assistant", "content": body[cut:].lstrip()}]
                yield Example(messages=msgs, source=source, source_id=loc, conversation_id=f"{source}:{loc}",
                              agent=self.config.agent, feedback_type="validation", meta={"document": where})

    def _chunks(self, text: str, title: str) -> Iterator[tuple[str, str]]:
        """(heading, chunk) pairs: paragraphs packed up to chunk_chars within each section."""
        heading, buf = title, []
        size = 0
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            m = _HEADING.match(para.splitlines()[0]) if para else None
            if m:
                if buf:
                    yield heading, "\n\n".join(buf)
                heading, buf, size = m.group(2), [], 0
                para = "\n".join(para.splitlines()[1:]).strip()
            if not para:
                continue
            if buf and size + len(para) > self.config.chunk_chars:
                yield heading, "\n\n".join(buf)
                buf, size = [], 0
            buf.append(para[: self.config.chunk_chars])
            size += len(para)
        if buf:
            yield heading, "\n\n".join(buf)


def _cut(body: str) -> int:
    """Split near the middle, at a sentence or paragraph end when there is one."""
    mid = len(body) // 2
    for sep in ("\n\n", ". ", "\n", " "):
        i = body.find(sep, mid)
        if 0 < i < len(body) - 20:
            return i + len(sep)
    return mid
