"""Secrets out of text before it reaches a log, an error message or an HTTP answer.

One definition for the core and the plugins: ``ftctl.yaml``'s masking, the process runner's
error messages, the job logs of ``ftctl serve`` and a source's connection errors all use it.
"""

from __future__ import annotations

import re

# the password of a URL's userinfo: scheme://user:PASSWORD@host
_USERINFO = re.compile(r"(://[^:/@\s\"']+:)[^@\s\"'\\]+@")
# key=value in a query string (?token=...&) or a keyword DSN (host=h password=...), any case;
# (HF_TOKEN=, my_api_key= too); the value ends where a URL, a DSN or a JSON string would end it,
# and an escape (\") goes whole, so a redacted JSON log line stays valid JSON
_KEYS = r"password|passwd|pwd|token|access_token|refresh_token|auth_token|api_key|apikey|api-key|secret|client_secret"
_KEYVALUE = re.compile(rf"(?<![A-Za-z0-9])((?:[A-Za-z0-9]+[_-])*(?:{_KEYS})\s*=\s*)"
                       r"('(?:[^'\\]|\\.)*'|(?:[^\s&;,\"'\\}]|\\.)+)", re.I)


def redact(text: str) -> str:
    """Remove secrets from DSNs and URLs: ``postgresql://u:pw@h``, ``password=pw``,
    ``password='p w'``, ``?token=t``, ``api_key=k``."""
    text = _USERINFO.sub(r"\1****@", text)
    return _KEYVALUE.sub(r"\1****", text)
