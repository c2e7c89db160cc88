"""`python -m ftctl.cli.job [--die-with-parent] <ftctl args>`: the CLI, as a job.

--die-with-parent asks Linux to SIGKILL this process when the worker dies (prctl
PR_SET_PDEATHSIG), so a `kill -9` of the service never leaves a job running without it; the
run lock (flock) is released with the process and the job is marked interrupted at restart.
"""

from __future__ import annotations

import sys

from ftctl.lib.process import die_with_parent


def main(argv: list[str]) -> int:
    if argv[:1] == ["--die-with-parent"]:
        die_with_parent()
        argv = argv[1:]
    from ftctl.cli.main import main as cli

    sys.argv = ["ftctl", *argv]  # what .ftctl/log.jsonl records, as for a command typed by hand
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
