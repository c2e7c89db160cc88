"""Secrets out of text before it reaches a log, an error message or an HTTP answer.

One definition for the core and the plugins: ``ftctl.yaml``'s masking, the process runner's
error messages, the job logs of ``ftctl serve`` and a source's connection errors all use it.
"""

from __future__ import annotations

import re


def redact(text: str) -> str:
    """Remove passwords from DSNs and URLs: ``postgresql://u:pw@h`` and ``password=pw``."""
    text = re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1****@", text)
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1****", text, flags=re.I)
