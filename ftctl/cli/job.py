"""`python -m ftctl.cli.job [--die-with-parent] <ftctl args>`: the CLI, as a job.

--die-with-parent asks Linux to SIGKILL this process when the worker dies (prctl
PR_SET_PDEATHSIG), so a `kill -9` of the service never leaves a job running without it; the
run lock (flock) is released with the process and the job is marked interrupted at restart.
"""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent or parent == 1:  # the parent died before prctl took effect
        os._exit(137)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--die-with-parent"]:
        die_with_parent()
        argv = argv[1:]
    from ftctl.cli.main import main as cli

    sys.argv = ["ftctl", *argv]  # what .ftctl/log.jsonl records, as for a command typed by hand
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
