"""The workspace secret: a random key, kept out of git, that keys every hash of user data.

Tombstones (`ftctl forget`) and the example ids of eval reports are hashes of conversation
keys and values; without a secret anyone holding the repository could confirm a guess (an
e-mail address, a member number) by hashing it. With it, a guess can be checked only where the
secret is. It lives in ``.ftctl-secret`` at the workspace root (not in ``.ftctl/``, the run state
people clear), mode 0600, git-ignored; `ftctl doctor` checks all three.

Every machine that collects for the workspace needs the same file (copy it like a .env): a
tombstone records the secret's fingerprint, and a workspace whose secret does not match its
tombstones refuses to collect rather than let forgotten rows back in.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from ftctl.errors import FtctlError

SECRET_FILE = ".ftctl-secret"
GITIGNORE_LINE = f"/{SECRET_FILE}"


class SecretMissing(FtctlError):
    """The workspace's secret is gone (or another one) while hashes made with it are recorded."""


def path(root: Path) -> Path:
    return Path(root) / SECRET_FILE


def load(root: Path, *, create: bool = True) -> bytes:
    """The secret's bytes; created (0600, git-ignored) on first use when ``create``."""
    p = path(root)
    try:
        return _read(p)
    except FileNotFoundError:
        if not create:
            raise SecretMissing(f"the workspace secret {SECRET_FILE} is missing",
                                hint=f"copy {SECRET_FILE} from the machine that recorded the tombstones "
                                     f"(it is git-ignored, so clones do not have it)") from None
    value = secrets.token_hex(32)
    try:  # O_EXCL: two processes creating it at once agree on the winner's secret
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(p)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    ignore(root)
    return value.encode()


def _read(p: Path) -> bytes:
    text = p.read_text(encoding="ascii").strip()
    if len(text) < 32:
        raise FtctlError(f"{SECRET_FILE} is too short to be a secret ({len(text)} characters)",
                         hint="restore it from a backup; a new one would not match the recorded tombstones")
    return text.encode()


def ignore(root: Path) -> bool:
    """Make sure .gitignore names the secret; True when it had to be added."""
    from ftctl.lib.atomic import write_text

    gi = Path(root) / ".gitignore"
    lines = gi.read_text(encoding="utf-8").splitlines() if gi.exists() else []
    if GITIGNORE_LINE in lines:
        return False
    write_text(gi, "\n".join([*lines, GITIGNORE_LINE]) + "\n")
    return True


def fingerprint(secret: bytes) -> str:
    """Which secret made a hash (recorded beside it): reveals nothing of the secret."""
    return hmac.new(secret, b"ftctl-secret-fingerprint", hashlib.sha256).hexdigest()[:16]


def keyed(secret: bytes, *parts: str) -> str:
    """HMAC-SHA256 of ``parts`` under the secret (hex)."""
    return hmac.new(secret, "\0".join(parts).encode("utf-8"), hashlib.sha256).hexdigest()


def report_id(secret: bytes, key: str) -> str:
    """An example's id in a report: stable across reports of one workspace, useless elsewhere."""
    return "h" + keyed(secret, "report-id", key)[:15]
