"""An Ollama Modelfile beside a GGUF: FROM, TEMPLATE (from the chat template) and stop words.

Ollama templates are Go templates, not Jinja, and no library translates one into the other, so
this is hand-written: we render the Jinja chat template with marker messages to learn each role's
prefix and suffix (and a default system block, if the template adds one), build the Go template
from those pieces, and keep it only if it reproduces the Jinja rendering of sample conversations
exactly. Otherwise TEMPLATE is left out and Ollama uses the chat template stored in the GGUF.
"""

from __future__ import annotations

from pathlib import Path

from ftctl.api import write_text

ROLES = ("system", "user", "assistant")
_MARK = {"system": "\x01SYS\x01", "user": "\x01USR\x01", "assistant": "\x01AST\x01"}
SAMPLES = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}],
]


def _render(tok, messages, gen=True) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def template_pieces(tok) -> dict[str, str] | None:
    """Role prefixes/suffixes, the generation prompt and the default system block, or None."""
    try:
        text = _render(tok, [{"role": r, "content": _MARK[r]} for r in ROLES], gen=False)
        with_gen = _render(tok, [{"role": r, "content": _MARK[r]} for r in ROLES])
        user_only = _render(tok, [{"role": "user", "content": _MARK["user"]}], gen=False)
    except Exception:  # a template that rejects these shapes (e.g. no system role)
        return None
    idx = [text.find(_MARK[r]) for r in ROLES]
    if min(idx) < 0 or idx != sorted(idx) or not with_gen.startswith(text):
        return None
    ends = [i + len(_MARK[r]) for i, r in zip(idx, ROLES)]
    suffix = text[ends[2]:]  # the assistant's; every role ends its turn the same way (checked below)
    between = [text[ends[0]:idx[1]], text[ends[1]:idx[2]]]
    if not suffix or not all(b.startswith(suffix) for b in between):
        return None
    p = {"system": text[:idx[0]], "user": between[0][len(suffix):], "assistant": between[1][len(suffix):],
         "suffix": suffix, "generation": with_gen[len(text):]}
    u = user_only.find(p["user"] + _MARK["user"])
    p["default_system"] = user_only[:u] if u > 0 else ""
    return p


def go_template(p: dict[str, str]) -> str:
    def esc(s: str) -> str:
        return s.replace("{{", '{{ "{{" }}')

    head = ""
    if p["default_system"]:
        head = f'{{{{ if ne (index .Messages 0).Role "system" }}}}{esc(p["default_system"])}{{{{ end }}}}'
    branches = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{r}" }}}}{esc(p[r])}'
                       for i, r in enumerate(ROLES))
    # no "{{-" trimming after the head: the pieces' newlines are part of the format
    return (f"{head}{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ .Content }}}}{esc(p['suffix'])}"
            f"{{{{ end }}}}{esc(p['generation'])}")


def go_render(p: dict[str, str], messages) -> str:
    """What `go_template` renders for ``messages``: checked against the Jinja original."""
    head = p["default_system"] if messages and messages[0]["role"] != "system" else ""
    return head + "".join(p[m["role"]] + m["content"] + p["suffix"] for m in messages) + p["generation"]


def write_modelfile(gguf: Path, tok) -> Path:
    lines = [f"# Ollama: ollama create NAME -f {gguf.stem}.Modelfile", f"FROM ./{gguf.name}"]
    p = template_pieces(tok) if tok.chat_template else None
    if p and all(go_render(p, s) == _render(tok, s) for s in SAMPLES):
        lines.append(f'TEMPLATE """{go_template(p)}"""')
    stops = []
    for token in (tok.eos_token, (p or {}).get("suffix", "").strip()):
        if token and token not in stops:
            stops.append(token)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    path = gguf.with_name(f"{gguf.stem}.Modelfile")
    write_text(path, "\n".join(lines) + "\n")
    return path
