"""One exception family: every error a person may see carries an exit code and a hint.

The CLI prints ``message`` and ``hint`` (one line each); the traceback only with ``--debug``.
"""

from __future__ import annotations

# Documented exit codes (README, "Exit codes").
OK = 0
FAILURE = 1
USAGE = 2
NOTHING_TO_DO = 3
LOCKED = 4
GATE_FAILED = 5
ROLLED_BACK = 6


class FtctlError(Exception):
    exit_code = FAILURE

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.result: dict | None = None  # what the command did before it stopped; --json prints it
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(FtctlError):
    """Bad command-line input: unknown version, invalid name, conflicting options."""

    exit_code = USAGE


class ConfigError(FtctlError):
    """ftctl.yaml (or an override) is missing, malformed or fails its schema."""

    exit_code = USAGE


class NotFound(UsageError):
    """A version, model, job or report that does not exist: a usage error on the command line
    (exit code 2), 404 over HTTP (ftctl serve)."""


class ModelNotFound(ConfigError, NotFound):
    """A model name that ftctl.yaml does not configure."""


class NotAWorkspace(FtctlError):
    exit_code = USAGE


class LockfileError(FtctlError):
    """models.lock is corrupt or of an unknown schema: never rewritten silently."""


class NothingToDo(FtctlError):
    exit_code = NOTHING_TO_DO


class Locked(FtctlError):
    exit_code = LOCKED


class GateFailed(FtctlError):
    exit_code = GATE_FAILED


class RolledBack(FtctlError):
    exit_code = ROLLED_BACK


class ExternalToolError(FtctlError):
    """git, DVC, pm2, nginx, llama.cpp: a tool we call failed or is missing."""
